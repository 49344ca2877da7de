// One connection to a TPM through ESAPI and the TCTI loader. Every method
// talks to the TPM and must run on a worker thread; the owning Device runs
// them one at a time, so this class needs no locks.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <tss2/tss2_esys.h>

#include "ek_templates.h"
#include "value.h"

namespace keel {

using Bytes = std::vector<uint8_t>;
struct Failure;

// A transient object or session left in the TPM by a connection that broke.
struct Orphan {
  TPM2_HANDLE handle;
  Bytes name;  // objects: flushed only when the TPM's object at that handle has this name
};

struct PcrSel {
  TPMI_ALG_HASH alg;
  uint32_t mask;  // bit n selects PCR n (0..23)
};

class TpmSession {
 public:
  explicit TpmSession(std::string tcti) : tcti_(std::move(tcti)) {}
  ~TpmSession();
  TpmSession(const TpmSession&) = delete;
  TpmSession& operator=(const TpmSession&) = delete;

  const std::string& tcti() const { return tcti_; }

  void connect();
  // Flushes every object and handle reference this session made, then
  // finalizes ESYS and the TCTI.
  void close();

  // A failure on the way to the TPM (TCTI layer, or ESYS left in a state it
  // cannot leave: "called in the wrong order", I/O error, truncated answer)
  // marks the connection broken: the failure becomes a Connection failure,
  // and every later call is refused without touching the TPM until
  // reconnect() rebuilds the ESYS context on a new TCTI.
  void noteFailure(Failure& f);
  bool broken() const { return broken_; }
  // Finalizes ESYS and the TCTI and opens them again (TPM2_Startup when the
  // TPM was reset). Objects this session had loaded are flushed if the TPM
  // still holds them (same handle and name), then reloaded lazily, on first
  // use, from what loaded them (blobs under the EK, or the persistent handle),
  // so their ids stay valid. Policy sessions a lost command left behind are
  // flushed too. No-op on a healthy connection.
  void reconnect();

  Value getRandom(uint32_t count);
  Value pcrRead(const std::vector<PcrSel>& sels);
  void pcrExtend(uint32_t pcr, const std::vector<std::pair<TPMI_ALG_HASH, Bytes>>& digests);
  Value ekPublic(EkKind kind);
  Value readNv(uint32_t index);
  Value createAk(EkKind ek, AkKind ak);
  Value loadAk(EkKind ek, const Bytes& publicArea, const Bytes& privateBlob);
  // The agent key: created under the EK like the AK, but an unrestricted
  // signing key (it signs TLS channel bindings and the agent's CSR).
  Value createAgentKey(EkKind ek);
  Value loadAgentKey(EkKind ek, const Bytes& publicArea, const Bytes& privateBlob);
  Value agentKeyFromPersistent(uint32_t persistentHandle);
  // TPM2_Certify of a loaded object by a loaded AK over qualifyingData.
  Value certify(uint32_t objectId, uint32_t akId, const Bytes& nonce);
  // TPM2_Sign of a digest with a loaded unrestricted signing key.
  Value sign(uint32_t keyId, const Bytes& digest);
  void persistAk(uint32_t id, uint32_t persistentHandle);
  Value akFromPersistent(uint32_t persistentHandle);
  void evictPersistent(uint32_t persistentHandle);
  Value quote(uint32_t id, const std::vector<PcrSel>& sels, const Bytes& nonce);
  Value activateCredential(uint32_t id, EkKind ek, const Bytes& credentialBlob, const Bytes& secret);
  void flushAk(uint32_t id);
  Value loadedHandles();

 private:
  // A key this session holds for JavaScript, and how to get it again after a
  // reconnect: from its blobs under the EK, or from its persistent handle.
  struct AkEntry {
    ESYS_TR tr;           // ESYS_TR_NONE: not loaded on this connection (reloaded on use)
    bool persistent;      // a reference to a persistent object: close, never flush
    uint32_t tpmHandle;   // the persistent handle, when persistent
    EkKind ek;            // the parent EK, when loaded from blobs
    Bytes publicArea;     // TPMT_PUBLIC of the blobs, when loaded from blobs
    Bytes privateBlob;
    bool (*shape)(const TPMT_PUBLIC&);
    const char* what;
    Bytes name;           // the name it had when first loaded: a reload must give the same
  };
  struct EkRef {
    ESYS_TR tr = ESYS_TR_NONE;
    bool transient = false;
    TPMT_PUBLIC pub{};
  };
  class EkLease;
  class EkAuth;

  void requireOpen() const;
  void release();
  void finalize();
  void open();
  void flushOrphans();
  ESYS_TR loadedTr(uint32_t id);
  ESYS_TR loadBlobs(EkKind ek, const Bytes& publicArea, const Bytes& privateBlob, bool (*shape)(const TPMT_PUBLIC&),
                    const char* what);
  ESYS_TR openPersistent(uint32_t persistentHandle, bool (*shape)(const TPMT_PUBLIC&), const char* what,
                         TPMT_PUBLIC* pubOut);
  bool handlePresent(TPM2_HANDLE h);
  EkRef acquireEk(EkKind kind);
  AkEntry& ak(uint32_t id);
  uint32_t registerAk(AkEntry e);
  Bytes nameOf(ESYS_TR tr);
  Value loadUnder(EkKind ek, const Bytes& publicArea, const Bytes& privateBlob, bool (*shape)(const TPMT_PUBLIC&),
                  const char* what);
  Value fromPersistent(uint32_t persistentHandle, bool (*shape)(const TPMT_PUBLIC&), const char* what);

  std::string tcti_;
  TSS2_TCTI_CONTEXT* tctiCtx_ = nullptr;
  ESYS_CONTEXT* esys_ = nullptr;
  uint16_t nvBufferMax_ = 512;
  // Persistent EKs found and checked against their template, per EkKind.
  ESYS_TR persistentEk_[3] = {ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE};
  TPMT_PUBLIC persistentEkPub_[3]{};
  bool ekProbed_[3] = {false, false, false};
  std::map<uint32_t, AkEntry> aks_;
  uint32_t nextAkId_ = 1;
  bool broken_ = false;
  bool closed_ = false;
  // Handles whose flush failed because the connection broke: flushed after the reconnect.
  std::vector<Orphan> orphans_;
};

}  // namespace keel
