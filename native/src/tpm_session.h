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
  struct AkEntry {
    ESYS_TR tr;
    bool persistent;      // a reference to a persistent object: close, never flush
    uint32_t tpmHandle;   // the persistent handle, when persistent
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
  bool handlePresent(TPM2_HANDLE h);
  EkRef acquireEk(EkKind kind);
  const AkEntry& ak(uint32_t id) const;
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
};

}  // namespace keel
