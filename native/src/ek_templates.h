// Key templates: the TCG EK Credential Profile's default EKs and the AK
// templates tpm2_createak uses.
#pragma once

#include <tss2/tss2_tpm2_types.h>

namespace keel {

enum class EkKind { Rsa2048 = 0, EccP256 = 1, EccP384 = 2 };
enum class AkKind { EccP256 = 0, Rsa2048 = 1 };

struct EkProfile {
  const char* label;               // for messages
  TPM2_HANDLE persistentHandle;    // where provisioning tools persist this EK
  TPMT_PUBLIC tmpl;                // the template CreatePrimary derives it from
  // High-range EKs set userWithAuth (their authPolicy is PolicyB, an OR of
  // policies); low-range EKs need PolicySecret(TPM_RH_ENDORSEMENT).
  bool usePasswordAuth;
};

const EkProfile& ekProfile(EkKind kind);
TPMT_PUBLIC akTemplate(AkKind kind);
// The agent's TLS-binding key: an unrestricted ECDSA P-256 signing key that
// never leaves the TPM (fixedTPM, fixedParent, sensitiveDataOrigin).
TPMT_PUBLIC agentKeyTemplate();

// Whether a loaded key has the template's type, nameAlg, attributes, policy
// and parameters (the unique field is the key itself and is not compared).
bool publicMatchesTemplate(const TPMT_PUBLIC& have, const TPMT_PUBLIC& tmpl);

}  // namespace keel
