#include "tpm_session.h"

#include <cstring>
#include <memory>

#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>
#include <tss2/tss2_sys.h>
#include <tss2/tss2_tctildr.h>

#include "failure.h"

namespace keel {
namespace {

struct EsysFree {
  void operator()(void* p) const { Esys_Free(p); }
};
// Output parameters of Esys_* calls are allocated by ESYS and freed with Esys_Free.
template <class T>
using Owned = std::unique_ptr<T, EsysFree>;

// Flushes (transient object, session) or closes (reference to a persistent
// object or NV index) an ESYS_TR when the scope ends, on error paths too.
class TrGuard {
 public:
  enum class Mode { Flush, Close };
  // A Flush guard given `orphans` records the TPM handle of an object or
  // session whose flush failed (a broken connection), to flush it after the
  // reconnect.
  TrGuard(ESYS_CONTEXT* ctx, ESYS_TR tr, Mode mode, std::vector<Orphan>* orphans = nullptr)
      : ctx_(ctx), tr_(tr), mode_(mode), orphans_(orphans) {}
  ~TrGuard() { reset(); }
  TrGuard(const TrGuard&) = delete;
  TrGuard& operator=(const TrGuard&) = delete;
  ESYS_TR get() const { return tr_; }
  ESYS_TR release() {
    ESYS_TR t = tr_;
    tr_ = ESYS_TR_NONE;
    return t;
  }
  void adopt(ESYS_TR tr) {
    reset();
    tr_ = tr;
  }
  void reset() {
    if (tr_ == ESYS_TR_NONE) return;
    if (mode_ == Mode::Flush) {
      TPM2_HANDLE h = 0;
      bool known = Esys_TR_GetTpmHandle(ctx_, tr_, &h) == TSS2_RC_SUCCESS;
      if (Esys_FlushContext(ctx_, tr_) != TSS2_RC_SUCCESS && orphans_ && known && h != 0) {
        Bytes name;
        TPM2B_NAME* n = nullptr;
        if (Esys_TR_GetName(ctx_, tr_, &n) == TSS2_RC_SUCCESS && n) name.assign(n->name, n->name + n->size);
        Esys_Free(n);
        orphans_->push_back(Orphan{h, std::move(name)});
      }
    } else {
      Esys_TR_Close(ctx_, &tr_);
    }
    tr_ = ESYS_TR_NONE;
  }

 private:
  ESYS_CONTEXT* ctx_;
  ESYS_TR tr_;
  Mode mode_;
  std::vector<Orphan>* orphans_;
};

bool isTctiLayer(TSS2_RC rc) { return (rc & TSS2_RC_LAYER_MASK) == TSS2_TCTI_RC_LAYER; }

// A failure after which the ESYS context is unusable or the TPM's answer was
// lost: the connection must be rebuilt. (ESYS stays in an internal-error
// state after a TCTI failure and answers BAD_SEQUENCE to everything after.)
bool isTransportFailure(TSS2_RC rc) {
  if (rc == TSS2_RC_SUCCESS) return false;
  if (isTctiLayer(rc)) return true;
  if ((rc & TSS2_RC_LAYER_MASK) == TSS2_SYS_RC_LAYER) {
    TSS2_RC base = rc & 0xFFFF;
    return base == TSS2_BASE_RC_IO_ERROR || base == TSS2_BASE_RC_BAD_SEQUENCE || base == TSS2_BASE_RC_INSUFFICIENT_RESPONSE ||
           base == TSS2_BASE_RC_MALFORMED_RESPONSE;
  }
  return rc == TSS2_ESYS_RC_BAD_SEQUENCE || rc == TSS2_ESYS_RC_IO_ERROR || rc == TSS2_ESYS_RC_INSUFFICIENT_RESPONSE ||
         rc == TSS2_ESYS_RC_MALFORMED_RESPONSE;
}

// TPM_RC_INITIALIZE (0x100): the TPM wants TPM2_Startup first.
bool needsStartup(TSS2_RC rc) { return (rc & 0xFFFF) == TPM2_RC_INITIALIZE; }

const char* algName(TPMI_ALG_HASH alg) {
  switch (alg) {
    case TPM2_ALG_SHA1: return "sha1";
    case TPM2_ALG_SHA256: return "sha256";
    case TPM2_ALG_SHA384: return "sha384";
    case TPM2_ALG_SHA512: return "sha512";
    default: return "unknown";
  }
}

TPML_PCR_SELECTION toSelection(const std::vector<PcrSel>& sels) {
  TPML_PCR_SELECTION out;
  std::memset(&out, 0, sizeof out);
  if (sels.size() > TPM2_NUM_PCR_BANKS)
    throw Failure(FailureKind::Argument, "", 0, "too many PCR banks in one selection");
  for (const PcrSel& s : sels) {
    TPMS_PCR_SELECTION& t = out.pcrSelections[out.count++];
    t.hash = s.alg;
    t.sizeofSelect = 3;
    t.pcrSelect[0] = s.mask & 0xFF;
    t.pcrSelect[1] = (s.mask >> 8) & 0xFF;
    t.pcrSelect[2] = (s.mask >> 16) & 0xFF;
  }
  return out;
}

Bytes marshalPublic(const TPMT_PUBLIC& pub) {
  uint8_t buf[sizeof(TPMT_PUBLIC)];
  size_t off = 0;
  check(Tss2_MU_TPMT_PUBLIC_Marshal(&pub, buf, sizeof buf, &off), "Tss2_MU_TPMT_PUBLIC_Marshal");
  return Bytes(buf, buf + off);
}

Bytes marshalSignature(const TPMT_SIGNATURE& sig) {
  uint8_t buf[sizeof(TPMT_SIGNATURE)];
  size_t off = 0;
  check(Tss2_MU_TPMT_SIGNATURE_Marshal(&sig, buf, sizeof buf, &off), "Tss2_MU_TPMT_SIGNATURE_Marshal");
  return Bytes(buf, buf + off);
}

bool isAkShaped(const TPMT_PUBLIC& p) {
  const TPMA_OBJECT need = TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM;
  return (p.objectAttributes & need) == need && (p.objectAttributes & TPMA_OBJECT_DECRYPT) == 0 &&
         (p.type == TPM2_ALG_RSA || p.type == TPM2_ALG_ECC);
}

// What the agent key must be: an unrestricted signing key bound to this TPM.
bool isAgentKeyShaped(const TPMT_PUBLIC& p) {
  const TPMA_OBJECT need = TPMA_OBJECT_SIGN_ENCRYPT | TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                           TPMA_OBJECT_SENSITIVEDATAORIGIN;
  return (p.objectAttributes & need) == need &&
         (p.objectAttributes & (TPMA_OBJECT_DECRYPT | TPMA_OBJECT_RESTRICTED)) == 0 && p.type == TPM2_ALG_ECC;
}

std::string hex32(uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

}  // namespace

// ---- EK use -----------------------------------------------------------------

// The EK for the length of one operation: a transient EK made from the
// template is flushed at the end; a persistent one stays.
class TpmSession::EkLease {
 public:
  EkLease(TpmSession& s, EkKind kind)
      : ref_(s.acquireEk(kind)),
        guard_(s.esys_, ref_.transient ? ref_.tr : ESYS_TR_NONE, TrGuard::Mode::Flush, &s.orphans_) {}
  ESYS_TR tr() const { return ref_.tr; }
  const TPMT_PUBLIC& pub() const { return ref_.pub; }

 private:
  EkRef ref_;
  TrGuard guard_;
};

// Authorization of the EK in the USER role: PolicySecret(TPM_RH_ENDORSEMENT)
// in a fresh policy session (flushed afterwards) for low-range EKs; the empty
// password for high-range EKs, which set userWithAuth.
class TpmSession::EkAuth {
 public:
  EkAuth(TpmSession& s, EkKind kind) : guard_(s.esys_, ESYS_TR_NONE, TrGuard::Mode::Flush, &s.orphans_) {
    const EkProfile& prof = ekProfile(kind);
    if (prof.usePasswordAuth) {
      handle_ = ESYS_TR_PASSWORD;
      return;
    }
    TPMT_SYM_DEF sym;
    std::memset(&sym, 0, sizeof sym);
    sym.algorithm = TPM2_ALG_NULL;
    ESYS_TR session = ESYS_TR_NONE;
    check(Esys_StartAuthSession(s.esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                ESYS_TR_NONE, nullptr, TPM2_SE_POLICY, &sym, prof.tmpl.nameAlg, &session),
          "TPM2_StartAuthSession");
    guard_.adopt(session);  // flushed by the member's destructor, also if PolicySecret throws
    TPM2B_NONCE nonceTpm{};
    TPM2B_DIGEST cpHash{};
    TPM2B_NONCE policyRef{};
    TPM2B_TIMEOUT* timeout = nullptr;
    TPMT_TK_AUTH* ticket = nullptr;
    TSS2_RC rc = Esys_PolicySecret(s.esys_, ESYS_TR_RH_ENDORSEMENT, session, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                   ESYS_TR_NONE, &nonceTpm, &cpHash, &policyRef, 0, &timeout, &ticket);
    Esys_Free(timeout);
    Esys_Free(ticket);
    check(rc, "TPM2_PolicySecret");
    handle_ = session;
  }
  ESYS_TR handle() const { return handle_; }

 private:
  TrGuard guard_;
  ESYS_TR handle_ = ESYS_TR_NONE;
};

TpmSession::EkRef TpmSession::acquireEk(EkKind kind) {
  const int k = static_cast<int>(kind);
  const EkProfile& prof = ekProfile(kind);
  if (!ekProbed_[k]) {
    ekProbed_[k] = true;
    if (handlePresent(prof.persistentHandle)) {
      ESYS_TR tr = ESYS_TR_NONE;
      check(Esys_TR_FromTPMPublic(esys_, prof.persistentHandle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr),
            "TPM2_ReadPublic");
      TrGuard g(esys_, tr, TrGuard::Mode::Close);
      TPM2B_PUBLIC* pub = nullptr;
      TPM2B_NAME* name = nullptr;
      TPM2B_NAME* qname = nullptr;
      TSS2_RC rc = Esys_ReadPublic(esys_, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &name, &qname);
      Owned<TPM2B_PUBLIC> p(pub);
      Esys_Free(name);
      Esys_Free(qname);
      check(rc, "TPM2_ReadPublic");
      // Something else at the EK's handle: ignore it and derive the EK from its template.
      if (publicMatchesTemplate(p->publicArea, prof.tmpl)) {
        persistentEk_[k] = g.release();
        persistentEkPub_[k] = p->publicArea;
      }
    }
  }
  EkRef ref;
  if (persistentEk_[k] != ESYS_TR_NONE) {
    ref.tr = persistentEk_[k];
    ref.pub = persistentEkPub_[k];
    return ref;
  }
  TPM2B_SENSITIVE_CREATE sens{};
  TPM2B_PUBLIC in{};
  in.publicArea = prof.tmpl;
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creationPcr{};
  ESYS_TR tr = ESYS_TR_NONE;
  TPM2B_PUBLIC* out = nullptr;
  TPM2B_CREATION_DATA* cdata = nullptr;
  TPM2B_DIGEST* chash = nullptr;
  TPMT_TK_CREATION* ticket = nullptr;
  TSS2_RC rc = Esys_CreatePrimary(esys_, ESYS_TR_RH_ENDORSEMENT, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                  &sens, &in, &outside, &creationPcr, &tr, &out, &cdata, &chash, &ticket);
  Owned<TPM2B_PUBLIC> o(out);
  Esys_Free(cdata);
  Esys_Free(chash);
  Esys_Free(ticket);
  check(rc, "TPM2_CreatePrimary");
  ref.tr = tr;
  ref.transient = true;
  ref.pub = o->publicArea;
  return ref;
}

// ---- lifecycle --------------------------------------------------------------

TpmSession::~TpmSession() {
  // Reached without close() only when the JS object was collected: release
  // the library state without talking to the TPM (that is close()'s job).
  if (esys_) Esys_Finalize(&esys_);
  if (tctiCtx_) Tss2_TctiLdr_Finalize(&tctiCtx_);
}

void TpmSession::requireOpen() const {
  if (closed_) throw Failure(FailureKind::Closed, "", 0, "the TPM device is closed");
  if (broken_ || !esys_)
    throw Failure(FailureKind::Connection, "", 0,
                  "the connection to the TPM on TCTI '" + tcti_ + "' was lost and is not reopened yet");
}

void TpmSession::connect() {
  if (esys_ || closed_) return;
  open();
}

void TpmSession::open() {
  TSS2_RC rc = Tss2_TctiLdr_Initialize(tcti_.c_str(), &tctiCtx_);
  if (rc != TSS2_RC_SUCCESS) {
    tctiCtx_ = nullptr;
    throw Failure(FailureKind::Connection, "Tss2_TctiLdr_Initialize", rc,
                  "cannot reach the TPM through TCTI '" + tcti_ + "': " + decodeRc(rc));
  }
  rc = Esys_Initialize(&esys_, tctiCtx_, nullptr);
  if (rc != TSS2_RC_SUCCESS) {
    esys_ = nullptr;
    Tss2_TctiLdr_Finalize(&tctiCtx_);
    throw Failure(FailureKind::Connection, "Esys_Initialize", rc,
                  "cannot initialize ESAPI on TCTI '" + tcti_ + "': " + decodeRc(rc));
  }
  // First command: learns the NV buffer size and proves the TPM answers.
  for (int attempt = 0; attempt < 2; attempt++) {
    TPMI_YES_NO more = 0;
    TPMS_CAPABILITY_DATA* cap = nullptr;
    rc = Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_TPM_PROPERTIES,
                            TPM2_PT_NV_BUFFER_MAX, 1, &more, &cap);
    Owned<TPMS_CAPABILITY_DATA> c(cap);
    if (rc == TSS2_RC_SUCCESS) {
      const TPML_TAGGED_TPM_PROPERTY& props = c->data.tpmProperties;
      if (props.count >= 1 && props.tpmProperty[0].property == TPM2_PT_NV_BUFFER_MAX && props.tpmProperty[0].value > 0)
        nvBufferMax_ = static_cast<uint16_t>(std::min<uint32_t>(props.tpmProperty[0].value, TPM2_MAX_NV_BUFFER_SIZE));
      return;
    }
    if (attempt == 0 && needsStartup(rc)) {
      // A TPM nobody started (a bare simulator): start it as firmware would.
      TSS2_RC src = Esys_Startup(esys_, TPM2_SU_CLEAR);
      if (src == TSS2_RC_SUCCESS) continue;
      rc = src;
    }
    break;
  }
  FailureKind kind = isTransportFailure(rc) ? FailureKind::Connection : FailureKind::Tpm;
  std::string msg = kind == FailureKind::Connection
                        ? "the TPM on TCTI '" + tcti_ + "' does not answer: " + decodeRc(rc)
                        : "TPM2_GetCapability failed: " + decodeRc(rc);
  finalize();
  throw Failure(kind, "TPM2_GetCapability", rc, msg);
}

void TpmSession::finalize() {
  for (int k = 0; k < 3; k++) {
    persistentEk_[k] = ESYS_TR_NONE;
    ekProbed_[k] = false;
  }
  for (auto& [id, e] : aks_) e.tr = ESYS_TR_NONE;
  if (esys_) Esys_Finalize(&esys_);
  if (tctiCtx_) Tss2_TctiLdr_Finalize(&tctiCtx_);
  esys_ = nullptr;
  tctiCtx_ = nullptr;
}

void TpmSession::release() {
  aks_.clear();
  orphans_.clear();
  finalize();
}

void TpmSession::noteFailure(Failure& f) {
  if (closed_ || !esys_ || f.kind == FailureKind::Connection) {
    if (f.kind == FailureKind::Connection && esys_) broken_ = true;
    return;
  }
  if (!isTransportFailure(f.rc)) return;
  broken_ = true;
  f.kind = FailureKind::Connection;
  f.message = "lost the connection to the TPM on TCTI '" + tcti_ + "' (" + f.message + ")";
}

void TpmSession::reconnect() {
  if (closed_) throw Failure(FailureKind::Closed, "", 0, "the TPM device is closed");
  if (esys_ && !broken_) return;
  if (esys_) {
    // What this connection had loaded: flushed after reconnecting if the TPM
    // still holds it (only the connection broke), else it went with a TPM reset.
    for (auto& [id, e] : aks_) {
      if (e.tr == ESYS_TR_NONE || e.persistent) continue;
      TPM2_HANDLE h = 0;
      if (Esys_TR_GetTpmHandle(esys_, e.tr, &h) == TSS2_RC_SUCCESS && h != 0) orphans_.push_back(Orphan{h, e.name});
    }
  }
  finalize();
  open();  // throws Connection while the TPM is unreachable; broken_ stays set
  broken_ = false;
  flushOrphans();
}

void TpmSession::flushOrphans() {
  std::vector<Orphan> left;
  left.swap(orphans_);
  for (const Orphan& o : left) {
    const TPM2_HANDLE type = o.handle >> 24;
    if (type == TPM2_HT_TRANSIENT) {
      // Flushed only when the object there is still the one this session
      // loaded: after a TPM reset the handle may hold someone else's object.
      ESYS_TR tr = ESYS_TR_NONE;
      if (Esys_TR_FromTPMPublic(esys_, o.handle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr) != TSS2_RC_SUCCESS) continue;
      bool same = !o.name.empty() && nameOf(tr) == o.name;
      if (same) Esys_FlushContext(esys_, tr);
      else Esys_TR_Close(esys_, &tr);
    } else if (type == TPM2_HT_HMAC_SESSION || type == TPM2_HT_POLICY_SESSION) {
      // A session has no name to compare; after a TPM reset none survives, and
      // a resource manager gives each connection its own, so a stale handle
      // only answers TPM_RC_HANDLE.
      TSS2_SYS_CONTEXT* sys = nullptr;
      if (Esys_GetSysContext(esys_, &sys) == TSS2_RC_SUCCESS && sys) Tss2_Sys_FlushContext(sys, o.handle);
    }
  }
}

void TpmSession::close() {
  if (closed_) return;
  closed_ = true;
  if (!esys_ || broken_) {
    // Nothing can be flushed over a broken connection: the TPM's reset, or
    // the resource manager's cleanup of the closed connection, takes them.
    release();
    return;
  }
  for (auto& [id, e] : aks_) {
    if (e.tr == ESYS_TR_NONE) continue;
    if (e.persistent) Esys_TR_Close(esys_, &e.tr);
    else Esys_FlushContext(esys_, e.tr);
  }
  for (int k = 0; k < 3; k++)
    if (persistentEk_[k] != ESYS_TR_NONE) Esys_TR_Close(esys_, &persistentEk_[k]);
  release();
}

bool TpmSession::handlePresent(TPM2_HANDLE h) {
  TPMI_YES_NO more = 0;
  TPMS_CAPABILITY_DATA* cap = nullptr;
  check(Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, h, 1, &more, &cap),
        "TPM2_GetCapability");
  Owned<TPMS_CAPABILITY_DATA> c(cap);
  return c->data.handles.count >= 1 && c->data.handles.handle[0] == h;
}

// ---- random, PCRs -------------------------------------------------------------

Value TpmSession::getRandom(uint32_t count) {
  requireOpen();
  Bytes out;
  out.reserve(count);
  while (out.size() < count) {
    // A TPM returns at most its largest digest size per call (32 or 48 bytes).
    uint16_t want = static_cast<uint16_t>(std::min<size_t>(count - out.size(), sizeof(TPMU_HA)));
    TPM2B_DIGEST* got = nullptr;
    check(Esys_GetRandom(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, want, &got), "TPM2_GetRandom");
    Owned<TPM2B_DIGEST> g(got);
    if (g->size == 0) throw Failure(FailureKind::Tpm, "TPM2_GetRandom", 0, "TPM2_GetRandom returned no bytes");
    out.insert(out.end(), g->buffer, g->buffer + std::min<size_t>(g->size, count - out.size()));
  }
  return Value::buf(std::move(out));
}

Value TpmSession::pcrRead(const std::vector<PcrSel>& sels) {
  requireOpen();
  // PCR_Read answers at most 8 digests per call: ask again for what is left.
  // If a PCR changes between the calls (the update counter moves), start over
  // so that the values returned belong to one moment.
  for (int attempt = 0; attempt < 5; attempt++) {
    std::vector<PcrSel> left = sels;
    Value result = Value::array();
    bool first = true;
    UINT32 counter0 = 0;
    bool torn = false;
    for (;;) {
      bool any = false;
      for (const PcrSel& s : left) any = any || s.mask != 0;
      if (!any) break;
      std::vector<PcrSel> ask;
      for (const PcrSel& s : left)
        if (s.mask != 0) ask.push_back(s);
      TPML_PCR_SELECTION in = toSelection(ask);
      UINT32 counter = 0;
      TPML_PCR_SELECTION* selOut = nullptr;
      TPML_DIGEST* values = nullptr;
      TSS2_RC rc = Esys_PCR_Read(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &in, &counter, &selOut, &values);
      Owned<TPML_PCR_SELECTION> so(selOut);
      Owned<TPML_DIGEST> vals(values);
      check(rc, "TPM2_PCR_Read");
      if (first) {
        counter0 = counter;
        first = false;
      } else if (counter != counter0) {
        torn = true;
        break;
      }
      uint32_t i = 0;
      bool progressed = false;
      for (uint32_t b = 0; b < so->count; b++) {
        const TPMS_PCR_SELECTION& s = so->pcrSelections[b];
        for (uint32_t pcr = 0; pcr < 8u * s.sizeofSelect && pcr < 32; pcr++) {
          if (!(s.pcrSelect[pcr >> 3] & (1u << (pcr & 7)))) continue;
          if (i >= vals->count)
            throw Failure(FailureKind::Tpm, "TPM2_PCR_Read", 0, "TPM2_PCR_Read returned fewer digests than selected");
          const TPM2B_DIGEST& d = vals->digests[i++];
          result.push(Value::object()
                          .set("alg", Value::num(s.hash))
                          .set("pcr", Value::num(pcr))
                          .set("digest", Value::buf(d.buffer, d.size)));
          for (PcrSel& l : left)
            if (l.alg == s.hash && (l.mask & (1u << pcr))) {
              l.mask &= ~(1u << pcr);
              progressed = true;
            }
        }
      }
      if (!progressed) {
        // The TPM returns nothing for a bank it has not allocated.
        std::string which;
        for (const PcrSel& l : left)
          if (l.mask) which += std::string(which.empty() ? "" : ", ") + algName(l.alg);
        throw Failure(FailureKind::Argument, "TPM2_PCR_Read", 0,
                      "the TPM has no PCR values for the selection in bank(s): " + which);
      }
    }
    if (!torn) return result;
  }
  throw Failure(FailureKind::Tpm, "TPM2_PCR_Read", 0, "PCRs kept changing while being read");
}

void TpmSession::pcrExtend(uint32_t pcr, const std::vector<std::pair<TPMI_ALG_HASH, Bytes>>& digests) {
  requireOpen();
  TPML_DIGEST_VALUES in;
  std::memset(&in, 0, sizeof in);
  if (digests.size() > TPM2_NUM_PCR_BANKS) throw Failure(FailureKind::Argument, "", 0, "too many digests");
  for (const auto& [alg, d] : digests) {
    TPMT_HA& h = in.digests[in.count++];
    h.hashAlg = alg;
    if (d.size() > sizeof(TPMU_HA)) throw Failure(FailureKind::Argument, "", 0, "digest too long");
    std::memcpy(&h.digest, d.data(), d.size());
  }
  check(Esys_PCR_Extend(esys_, ESYS_TR_PCR0 + pcr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &in),
        "TPM2_PCR_Extend");
}

// ---- EK, NV -----------------------------------------------------------------

Value TpmSession::ekPublic(EkKind kind) {
  requireOpen();
  EkLease ek(*this, kind);
  return Value::buf(marshalPublic(ek.pub()));
}

Value TpmSession::readNv(uint32_t index) {
  requireOpen();
  if (!handlePresent(index)) return Value::undefined();
  ESYS_TR tr = ESYS_TR_NONE;
  check(Esys_TR_FromTPMPublic(esys_, index, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr), "TPM2_NV_ReadPublic");
  TrGuard g(esys_, tr, TrGuard::Mode::Close);
  TPM2B_NV_PUBLIC* pub = nullptr;
  TPM2B_NAME* name = nullptr;
  TSS2_RC rc = Esys_NV_ReadPublic(esys_, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &name);
  Owned<TPM2B_NV_PUBLIC> p(pub);
  Esys_Free(name);
  check(rc, "TPM2_NV_ReadPublic");
  const TPMA_NV attrs = p->nvPublic.attributes;
  // Defined but never written: no content to return, as if absent.
  if (!(attrs & TPMA_NV_WRITTEN)) return Value::undefined();
  ESYS_TR auth;
  if (attrs & TPMA_NV_AUTHREAD) auth = tr;
  else if (attrs & TPMA_NV_OWNERREAD) auth = ESYS_TR_RH_OWNER;
  else if (attrs & TPMA_NV_PPREAD) auth = ESYS_TR_RH_PLATFORM;
  else throw Failure(FailureKind::Mismatch, "TPM2_NV_Read", 0, "NV index " + hex32(index) + " allows no read with a password");
  const uint16_t total = p->nvPublic.dataSize;
  Bytes out;
  out.reserve(total);
  while (out.size() < total) {
    uint16_t chunk = static_cast<uint16_t>(std::min<size_t>(nvBufferMax_, total - out.size()));
    TPM2B_MAX_NV_BUFFER* data = nullptr;
    rc = Esys_NV_Read(esys_, auth, tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, chunk,
                      static_cast<uint16_t>(out.size()), &data);
    Owned<TPM2B_MAX_NV_BUFFER> d(data);
    check(rc, "TPM2_NV_Read");
    if (d->size == 0) throw Failure(FailureKind::Tpm, "TPM2_NV_Read", 0, "TPM2_NV_Read returned no bytes");
    out.insert(out.end(), d->buffer, d->buffer + d->size);
  }
  out.resize(total);
  return Value::buf(std::move(out));
}

// ---- AKs --------------------------------------------------------------------

TpmSession::AkEntry& TpmSession::ak(uint32_t id) {
  auto it = aks_.find(id);
  if (it == aks_.end())
    throw Failure(FailureKind::StaleHandle, "", 0, "the AK handle was flushed or does not belong to this device");
  return it->second;
}

// The entry's object on this connection: after a reconnect it is loaded again
// from what loaded it first, and must come back with the same name.
ESYS_TR TpmSession::loadedTr(uint32_t id) {
  AkEntry& e = ak(id);
  if (e.tr != ESYS_TR_NONE) return e.tr;
  ESYS_TR tr;
  if (e.persistent) {
    TPMT_PUBLIC pub{};
    tr = openPersistent(e.tpmHandle, e.shape, e.what, &pub);
    TrGuard g(esys_, tr, TrGuard::Mode::Close);
    if (nameOf(tr) != e.name)
      throw Failure(FailureKind::Mismatch, "", 0,
                    "the object at " + hex32(e.tpmHandle) + " is no longer the key that was loaded from there");
    tr = g.release();
  } else {
    tr = loadBlobs(e.ek, e.publicArea, e.privateBlob, e.shape, e.what);
    TrGuard g(esys_, tr, TrGuard::Mode::Flush, &orphans_);
    if (nameOf(tr) != e.name)
      throw Failure(FailureKind::Mismatch, "", 0, "the reloaded key has another name than the one first loaded");
    tr = g.release();
  }
  e.tr = tr;
  return tr;
}

uint32_t TpmSession::registerAk(AkEntry e) {
  uint32_t id = nextAkId_++;
  aks_.emplace(id, std::move(e));
  return id;
}

Bytes TpmSession::nameOf(ESYS_TR tr) {
  TPM2B_NAME* name = nullptr;
  check(Esys_TR_GetName(esys_, tr, &name), "Esys_TR_GetName");
  Owned<TPM2B_NAME> n(name);
  return Bytes(n->name, n->name + n->size);
}

Value TpmSession::createAk(EkKind ekKind, AkKind akKind) {
  requireOpen();
  EkLease ek(*this, ekKind);
  EkAuth auth(*this, ekKind);
  TPM2B_SENSITIVE_CREATE sens{};
  TPM2B_PUBLIC in{};
  in.publicArea = akTemplate(akKind);
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creationPcr{};
  TPM2B_PRIVATE* priv = nullptr;
  TPM2B_PUBLIC* pub = nullptr;
  TPM2B_CREATION_DATA* cdata = nullptr;
  TPM2B_DIGEST* chash = nullptr;
  TPMT_TK_CREATION* ticket = nullptr;
  TSS2_RC rc = Esys_Create(esys_, ek.tr(), auth.handle(), ESYS_TR_NONE, ESYS_TR_NONE, &sens, &in, &outside,
                           &creationPcr, &priv, &pub, &cdata, &chash, &ticket);
  Owned<TPM2B_PRIVATE> pv(priv);
  Owned<TPM2B_PUBLIC> pb(pub);
  Esys_Free(cdata);
  Esys_Free(chash);
  Esys_Free(ticket);
  check(rc, "TPM2_Create");
  return Value::object()
      .set("public", Value::buf(marshalPublic(pb->publicArea)))
      .set("private", Value::buf(pv->buffer, pv->size));
}

Value TpmSession::loadAk(EkKind ekKind, const Bytes& publicArea, const Bytes& privateBlob) {
  return loadUnder(ekKind, publicArea, privateBlob, isAkShaped, "a restricted signing key (not an AK)");
}

Value TpmSession::loadAgentKey(EkKind ekKind, const Bytes& publicArea, const Bytes& privateBlob) {
  return loadUnder(ekKind, publicArea, privateBlob, isAgentKeyShaped, "an unrestricted fixedTPM signing key (not an agent key)");
}

ESYS_TR TpmSession::loadBlobs(EkKind ekKind, const Bytes& publicArea, const Bytes& privateBlob,
                              bool (*shape)(const TPMT_PUBLIC&), const char* what) {
  TPM2B_PUBLIC in{};
  size_t off = 0;
  TSS2_RC rc = Tss2_MU_TPMT_PUBLIC_Unmarshal(publicArea.data(), publicArea.size(), &off, &in.publicArea);
  if (rc != TSS2_RC_SUCCESS || off != publicArea.size())
    throw Failure(FailureKind::Argument, "", 0, "the public area is not a well-formed TPMT_PUBLIC");
  if (!shape(in.publicArea)) throw Failure(FailureKind::Mismatch, "", 0, std::string("the key to load is not ") + what);
  TPM2B_PRIVATE priv{};
  if (privateBlob.empty() || privateBlob.size() > sizeof priv.buffer)
    throw Failure(FailureKind::Argument, "", 0, "the private blob has a bad size");
  priv.size = static_cast<UINT16>(privateBlob.size());
  std::memcpy(priv.buffer, privateBlob.data(), privateBlob.size());
  EkLease ek(*this, ekKind);
  EkAuth auth(*this, ekKind);
  ESYS_TR tr = ESYS_TR_NONE;
  check(Esys_Load(esys_, ek.tr(), auth.handle(), ESYS_TR_NONE, ESYS_TR_NONE, &priv, &in, &tr), "TPM2_Load");
  return tr;
}

Value TpmSession::loadUnder(EkKind ekKind, const Bytes& publicArea, const Bytes& privateBlob,
                            bool (*shape)(const TPMT_PUBLIC&), const char* what) {
  requireOpen();
  TrGuard g(esys_, loadBlobs(ekKind, publicArea, privateBlob, shape, what), TrGuard::Mode::Flush, &orphans_);
  Bytes name = nameOf(g.get());
  AkEntry e{ESYS_TR_NONE, false, 0, ekKind, publicArea, privateBlob, shape, what, name};
  e.tr = g.release();
  uint32_t id = registerAk(std::move(e));
  return Value::object().set("id", Value::num(id)).set("name", Value::buf(std::move(name)));
}

Value TpmSession::createAgentKey(EkKind ekKind) {
  requireOpen();
  EkLease ek(*this, ekKind);
  EkAuth auth(*this, ekKind);
  TPM2B_SENSITIVE_CREATE sens{};
  TPM2B_PUBLIC in{};
  in.publicArea = agentKeyTemplate();
  TPM2B_DATA outside{};
  TPML_PCR_SELECTION creationPcr{};
  TPM2B_PRIVATE* priv = nullptr;
  TPM2B_PUBLIC* pub = nullptr;
  TPM2B_CREATION_DATA* cdata = nullptr;
  TPM2B_DIGEST* chash = nullptr;
  TPMT_TK_CREATION* ticket = nullptr;
  TSS2_RC rc = Esys_Create(esys_, ek.tr(), auth.handle(), ESYS_TR_NONE, ESYS_TR_NONE, &sens, &in, &outside,
                           &creationPcr, &priv, &pub, &cdata, &chash, &ticket);
  Owned<TPM2B_PRIVATE> pv(priv);
  Owned<TPM2B_PUBLIC> pb(pub);
  Esys_Free(cdata);
  Esys_Free(chash);
  Esys_Free(ticket);
  check(rc, "TPM2_Create");
  return Value::object()
      .set("public", Value::buf(marshalPublic(pb->publicArea)))
      .set("private", Value::buf(pv->buffer, pv->size));
}

void TpmSession::persistAk(uint32_t id, uint32_t persistentHandle) {
  requireOpen();
  const AkEntry& e = ak(id);
  if (e.persistent)
    throw Failure(FailureKind::Argument, "", 0, "the AK is already persistent at " + hex32(e.tpmHandle));
  ESYS_TR obj = loadedTr(id);
  ESYS_TR newTr = ESYS_TR_NONE;
  check(Esys_EvictControl(esys_, ESYS_TR_RH_OWNER, obj, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                          persistentHandle, &newTr),
        "TPM2_EvictControl");
  if (newTr != ESYS_TR_NONE) Esys_TR_Close(esys_, &newTr);
}

Value TpmSession::akFromPersistent(uint32_t persistentHandle) {
  return fromPersistent(persistentHandle, isAkShaped, "a restricted signing key (not an AK)");
}

Value TpmSession::agentKeyFromPersistent(uint32_t persistentHandle) {
  return fromPersistent(persistentHandle, isAgentKeyShaped, "an unrestricted fixedTPM signing key (not an agent key)");
}

ESYS_TR TpmSession::openPersistent(uint32_t persistentHandle, bool (*shape)(const TPMT_PUBLIC&), const char* what,
                                   TPMT_PUBLIC* pubOut) {
  if (!handlePresent(persistentHandle))
    throw Failure(FailureKind::Mismatch, "", 0, "no persistent object at " + hex32(persistentHandle));
  ESYS_TR tr = ESYS_TR_NONE;
  check(Esys_TR_FromTPMPublic(esys_, persistentHandle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr),
        "TPM2_ReadPublic");
  TrGuard g(esys_, tr, TrGuard::Mode::Close);
  TPM2B_PUBLIC* pub = nullptr;
  TPM2B_NAME* name = nullptr;
  TPM2B_NAME* qname = nullptr;
  TSS2_RC rc = Esys_ReadPublic(esys_, tr, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &pub, &name, &qname);
  Owned<TPM2B_PUBLIC> p(pub);
  Esys_Free(name);
  Esys_Free(qname);
  check(rc, "TPM2_ReadPublic");
  if (!shape(p->publicArea))
    throw Failure(FailureKind::Mismatch, "", 0, "the object at " + hex32(persistentHandle) + " is not " + what);
  *pubOut = p->publicArea;
  return g.release();
}

Value TpmSession::fromPersistent(uint32_t persistentHandle, bool (*shape)(const TPMT_PUBLIC&), const char* what) {
  requireOpen();
  TPMT_PUBLIC pub{};
  TrGuard g(esys_, openPersistent(persistentHandle, shape, what, &pub), TrGuard::Mode::Close);
  Bytes objName = nameOf(g.get());
  Bytes publicArea = marshalPublic(pub);
  AkEntry e{ESYS_TR_NONE, true, persistentHandle, EkKind{}, {}, {}, shape, what, objName};
  e.tr = g.release();
  uint32_t id = registerAk(std::move(e));
  return Value::object()
      .set("id", Value::num(id))
      .set("name", Value::buf(std::move(objName)))
      .set("public", Value::buf(std::move(publicArea)));
}

void TpmSession::evictPersistent(uint32_t persistentHandle) {
  requireOpen();
  for (int k = 0; k < 3; k++)
    if (ekProfile(static_cast<EkKind>(k)).persistentHandle == persistentHandle)
      throw Failure(FailureKind::Argument, "", 0, "refusing to evict the EK at " + hex32(persistentHandle));
  if (!handlePresent(persistentHandle))
    throw Failure(FailureKind::Mismatch, "", 0, "no persistent object at " + hex32(persistentHandle));
  // References to the object become stale: drop them first.
  for (auto it = aks_.begin(); it != aks_.end();) {
    if (it->second.persistent && it->second.tpmHandle == persistentHandle) {
      if (it->second.tr != ESYS_TR_NONE) Esys_TR_Close(esys_, &it->second.tr);
      it = aks_.erase(it);
    } else {
      ++it;
    }
  }
  ESYS_TR tr = ESYS_TR_NONE;
  check(Esys_TR_FromTPMPublic(esys_, persistentHandle, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &tr),
        "TPM2_ReadPublic");
  TrGuard g(esys_, tr, TrGuard::Mode::Close);
  ESYS_TR newTr = ESYS_TR_NONE;
  TSS2_RC rc = Esys_EvictControl(esys_, ESYS_TR_RH_OWNER, tr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE,
                                 persistentHandle, &newTr);
  check(rc, "TPM2_EvictControl");
  // ESYS keeps the reference to the evicted object: the guard closes it (an
  // ESYS that had already dropped it only answers BAD_TR, harmlessly).
}

void TpmSession::flushAk(uint32_t id) {
  requireOpen();
  ESYS_TR tr = ak(id).tr;
  bool persistent = ak(id).persistent;
  aks_.erase(id);
  if (tr == ESYS_TR_NONE) return;  // not loaded on this connection (after a reconnect)
  if (persistent) {
    Esys_TR_Close(esys_, &tr);
    return;
  }
  TPM2_HANDLE h = 0;
  bool known = Esys_TR_GetTpmHandle(esys_, tr, &h) == TSS2_RC_SUCCESS;
  TSS2_RC rc = Esys_FlushContext(esys_, tr);
  if (rc != TSS2_RC_SUCCESS && known && isTransportFailure(rc)) orphans_.push_back(Orphan{h, {}});
  check(rc, "TPM2_FlushContext");
}

// ---- quote, credential activation ----------------------------------------------

Value TpmSession::quote(uint32_t id, const std::vector<PcrSel>& sels, const Bytes& nonce) {
  requireOpen();
  ESYS_TR akTr = loadedTr(id);
  TPM2B_DATA qd{};
  if (nonce.size() > sizeof qd.buffer) throw Failure(FailureKind::Argument, "", 0, "nonce too long");
  qd.size = static_cast<UINT16>(nonce.size());
  std::memcpy(qd.buffer, nonce.data(), nonce.size());
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the AK's own scheme
  TPML_PCR_SELECTION sel = toSelection(sels);
  TPM2B_ATTEST* quoted = nullptr;
  TPMT_SIGNATURE* sig = nullptr;
  TSS2_RC rc = Esys_Quote(esys_, akTr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &qd, &scheme, &sel, &quoted, &sig);
  Owned<TPM2B_ATTEST> q(quoted);
  Owned<TPMT_SIGNATURE> s(sig);
  check(rc, "TPM2_Quote");
  return Value::object()
      .set("attest", Value::buf(q->attestationData, q->size))
      .set("signature", Value::buf(marshalSignature(*s)));
}

Value TpmSession::activateCredential(uint32_t id, EkKind ekKind, const Bytes& credentialBlob, const Bytes& secret) {
  requireOpen();
  ESYS_TR akTr = loadedTr(id);
  TPM2B_ID_OBJECT cred{};
  if (credentialBlob.empty() || credentialBlob.size() > sizeof cred.credential)
    throw Failure(FailureKind::Argument, "", 0, "credentialBlob has a bad size");
  cred.size = static_cast<UINT16>(credentialBlob.size());
  std::memcpy(cred.credential, credentialBlob.data(), credentialBlob.size());
  TPM2B_ENCRYPTED_SECRET sec{};
  if (secret.empty() || secret.size() > sizeof sec.secret)
    throw Failure(FailureKind::Argument, "", 0, "encryptedSecret has a bad size");
  sec.size = static_cast<UINT16>(secret.size());
  std::memcpy(sec.secret, secret.data(), secret.size());
  EkLease ek(*this, ekKind);
  EkAuth auth(*this, ekKind);
  TPM2B_DIGEST* certInfo = nullptr;
  // activateHandle (the AK) is authorized in the ADMIN role: its empty password
  // (an AK has no adminWithPolicy); keyHandle (the EK) in the USER role.
  TSS2_RC rc = Esys_ActivateCredential(esys_, akTr, ek.tr(), ESYS_TR_PASSWORD, auth.handle(), ESYS_TR_NONE, &cred,
                                       &sec, &certInfo);
  Owned<TPM2B_DIGEST> ci(certInfo);
  check(rc, "TPM2_ActivateCredential");
  return Value::buf(ci->buffer, ci->size);
}

Value TpmSession::certify(uint32_t objectId, uint32_t akId, const Bytes& nonce) {
  requireOpen();
  ESYS_TR objTr = loadedTr(objectId);
  ESYS_TR signerTr = loadedTr(akId);
  TPM2B_DATA qd{};
  if (nonce.size() > sizeof qd.buffer) throw Failure(FailureKind::Argument, "", 0, "nonce too long");
  qd.size = static_cast<UINT16>(nonce.size());
  std::memcpy(qd.buffer, nonce.data(), nonce.size());
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the AK's own scheme
  TPM2B_ATTEST* certified = nullptr;
  TPMT_SIGNATURE* sig = nullptr;
  // Both objects have empty passwords: the object in the ADMIN role (no
  // adminWithPolicy), the AK in the USER role.
  TSS2_RC rc = Esys_Certify(esys_, objTr, signerTr, ESYS_TR_PASSWORD, ESYS_TR_PASSWORD, ESYS_TR_NONE, &qd, &scheme,
                            &certified, &sig);
  Owned<TPM2B_ATTEST> c(certified);
  Owned<TPMT_SIGNATURE> sg(sig);
  check(rc, "TPM2_Certify");
  return Value::object()
      .set("attest", Value::buf(c->attestationData, c->size))
      .set("signature", Value::buf(marshalSignature(*sg)));
}

Value TpmSession::sign(uint32_t keyId, const Bytes& digest) {
  requireOpen();
  ESYS_TR keyTr = loadedTr(keyId);
  TPM2B_DIGEST d{};
  if (digest.empty() || digest.size() > sizeof d.buffer) throw Failure(FailureKind::Argument, "", 0, "digest has a bad size");
  d.size = static_cast<UINT16>(digest.size());
  std::memcpy(d.buffer, digest.data(), digest.size());
  TPMT_SIG_SCHEME scheme{};
  scheme.scheme = TPM2_ALG_NULL;  // the key's own scheme
  // An unrestricted key signs any digest: the NULL ticket is accepted.
  TPMT_TK_HASHCHECK ticket{};
  ticket.tag = TPM2_ST_HASHCHECK;
  ticket.hierarchy = TPM2_RH_NULL;
  TPMT_SIGNATURE* sig = nullptr;
  TSS2_RC rc = Esys_Sign(esys_, keyTr, ESYS_TR_PASSWORD, ESYS_TR_NONE, ESYS_TR_NONE, &d, &scheme, &ticket, &sig);
  Owned<TPMT_SIGNATURE> sg(sig);
  check(rc, "TPM2_Sign");
  return Value::buf(marshalSignature(*sg));
}

// ---- diagnostics --------------------------------------------------------------

Value TpmSession::loadedHandles() {
  requireOpen();
  auto list = [&](TPM2_HANDLE first, TPM2_HANDLE last) {
    Value arr = Value::array();
    TPM2_HANDLE from = first;
    for (;;) {
      TPMI_YES_NO more = 0;
      TPMS_CAPABILITY_DATA* cap = nullptr;
      check(Esys_GetCapability(esys_, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, TPM2_CAP_HANDLES, from,
                               TPM2_MAX_CAP_HANDLES, &more, &cap),
            "TPM2_GetCapability");
      Owned<TPMS_CAPABILITY_DATA> c(cap);
      const TPML_HANDLE& hs = c->data.handles;
      bool past = false;
      for (uint32_t i = 0; i < hs.count; i++) {
        if (hs.handle[i] > last) {
          past = true;
          break;
        }
        arr.push(Value::num(hs.handle[i]));
        from = hs.handle[i] + 1;
      }
      if (!more || past || hs.count == 0) break;
    }
    return arr;
  };
  return Value::object()
      .set("transient", list(TPM2_TRANSIENT_FIRST, TPM2_TRANSIENT_LAST))
      .set("sessions", list(TPM2_LOADED_SESSION_FIRST, TPM2_LOADED_SESSION_LAST));
}

}  // namespace keel
