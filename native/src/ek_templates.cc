#include "ek_templates.h"

#include <cstring>

namespace keel {
namespace {

// PolicySecret(TPM_RH_ENDORSEMENT) with SHA-256: the low-range EK authPolicy.
const uint8_t kPolicyA256[32] = {
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xB3, 0xF8, 0x1A, 0x90, 0xCC, 0x8D, 0x46, 0xA5, 0xD7, 0x24,
    0xFD, 0x52, 0xD7, 0x6E, 0x06, 0x52, 0x0B, 0x64, 0xF2, 0xA1, 0xDA, 0x1B, 0x33, 0x14, 0x69, 0xAA};

// PolicyB with SHA-384 (PolicyOR of PolicySecret(endorsement) and the NV-based
// PolicyC): the high-range EK authPolicy; swtpm's 0x81010016 carries it.
const uint8_t kPolicyB384[48] = {
    0xB2, 0x6E, 0x7D, 0x28, 0xD1, 0x1A, 0x50, 0xBC, 0x53, 0xD8, 0x82, 0xBC, 0xF5, 0xFD, 0x3A, 0x1A,
    0x07, 0x41, 0x48, 0xBB, 0x35, 0xD3, 0xB4, 0xE4, 0xCB, 0x1C, 0x0A, 0xD9, 0xBD, 0xE4, 0x19, 0xCA,
    0xCB, 0x47, 0xBA, 0x09, 0x69, 0x96, 0x46, 0x15, 0x0F, 0x9F, 0xC0, 0x00, 0xF3, 0xF8, 0x0E, 0x12};

constexpr TPMA_OBJECT kEkAttrsLow = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                    TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_ADMINWITHPOLICY |
                                    TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;  // 0x000300B2
constexpr TPMA_OBJECT kEkAttrsHigh = kEkAttrsLow | TPMA_OBJECT_USERWITHAUTH;       // 0x000300F2

TPMT_PUBLIC rsaEk() {
  TPMT_PUBLIC t;
  std::memset(&t, 0, sizeof t);
  t.type = TPM2_ALG_RSA;
  t.nameAlg = TPM2_ALG_SHA256;
  t.objectAttributes = kEkAttrsLow;
  t.authPolicy.size = sizeof kPolicyA256;
  std::memcpy(t.authPolicy.buffer, kPolicyA256, sizeof kPolicyA256);
  t.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_AES;
  t.parameters.rsaDetail.symmetric.keyBits.aes = 128;
  t.parameters.rsaDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  t.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
  t.parameters.rsaDetail.keyBits = 2048;
  t.parameters.rsaDetail.exponent = 0;
  t.unique.rsa.size = 256;  // zero-filled, as the profile's template L-1 says
  return t;
}

TPMT_PUBLIC eccP256Ek() {
  TPMT_PUBLIC t;
  std::memset(&t, 0, sizeof t);
  t.type = TPM2_ALG_ECC;
  t.nameAlg = TPM2_ALG_SHA256;
  t.objectAttributes = kEkAttrsLow;
  t.authPolicy.size = sizeof kPolicyA256;
  std::memcpy(t.authPolicy.buffer, kPolicyA256, sizeof kPolicyA256);
  t.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  t.parameters.eccDetail.symmetric.keyBits.aes = 128;
  t.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  t.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  t.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  t.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  t.unique.ecc.x.size = 32;  // template L-2: zero-filled coordinates
  t.unique.ecc.y.size = 32;
  return t;
}

TPMT_PUBLIC eccP384Ek() {
  TPMT_PUBLIC t;
  std::memset(&t, 0, sizeof t);
  t.type = TPM2_ALG_ECC;
  t.nameAlg = TPM2_ALG_SHA384;
  t.objectAttributes = kEkAttrsHigh;
  t.authPolicy.size = sizeof kPolicyB384;
  std::memcpy(t.authPolicy.buffer, kPolicyB384, sizeof kPolicyB384);
  t.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_AES;
  t.parameters.eccDetail.symmetric.keyBits.aes = 256;
  t.parameters.eccDetail.symmetric.mode.aes = TPM2_ALG_CFB;
  t.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
  t.parameters.eccDetail.curveID = TPM2_ECC_NIST_P384;
  t.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  // template H-3: empty unique
  return t;
}

bool symEqual(const TPMT_SYM_DEF_OBJECT& a, const TPMT_SYM_DEF_OBJECT& b) {
  if (a.algorithm != b.algorithm) return false;
  if (a.algorithm == TPM2_ALG_NULL) return true;
  return a.keyBits.sym == b.keyBits.sym && a.mode.sym == b.mode.sym;
}

}  // namespace

const EkProfile& ekProfile(EkKind kind) {
  static const EkProfile rsa{"RSA-2048 EK", 0x81010001, rsaEk(), false};
  static const EkProfile p256{"ECC P-256 EK", 0x81010002, eccP256Ek(), false};
  static const EkProfile p384{"ECC P-384 EK", 0x81010016, eccP384Ek(), true};
  switch (kind) {
    case EkKind::Rsa2048: return rsa;
    case EkKind::EccP256: return p256;
    case EkKind::EccP384: return p384;
  }
  return rsa;
}

TPMT_PUBLIC akTemplate(AkKind kind) {
  TPMT_PUBLIC t;
  std::memset(&t, 0, sizeof t);
  t.nameAlg = TPM2_ALG_SHA256;
  // tpm2_createak's attributes plus noDA: the AK has an empty auth, so
  // dictionary-attack protection guards nothing, while a TPM in DA lockout
  // (failedTries rises at every startup after a power loss) would refuse
  // every quote and cut the node off.
  t.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_SIGN_ENCRYPT;
  if (kind == AkKind::EccP256) {
    t.type = TPM2_ALG_ECC;
    t.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
    t.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
    t.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
    t.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
    t.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  } else {
    t.type = TPM2_ALG_RSA;
    t.parameters.rsaDetail.symmetric.algorithm = TPM2_ALG_NULL;
    t.parameters.rsaDetail.scheme.scheme = TPM2_ALG_RSASSA;
    t.parameters.rsaDetail.scheme.details.rsassa.hashAlg = TPM2_ALG_SHA256;
    t.parameters.rsaDetail.keyBits = 2048;
    t.parameters.rsaDetail.exponent = 0;
  }
  return t;
}

TPMT_PUBLIC agentKeyTemplate() {
  TPMT_PUBLIC t;
  std::memset(&t, 0, sizeof t);
  t.type = TPM2_ALG_ECC;
  t.nameAlg = TPM2_ALG_SHA256;
  // noDA for the same reason as the AK: an empty auth, nothing to guess.
  t.objectAttributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_SENSITIVEDATAORIGIN |
                       TPMA_OBJECT_USERWITHAUTH | TPMA_OBJECT_NODA | TPMA_OBJECT_SIGN_ENCRYPT;
  t.parameters.eccDetail.symmetric.algorithm = TPM2_ALG_NULL;
  t.parameters.eccDetail.scheme.scheme = TPM2_ALG_ECDSA;
  t.parameters.eccDetail.scheme.details.ecdsa.hashAlg = TPM2_ALG_SHA256;
  t.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
  t.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
  return t;
}

bool publicMatchesTemplate(const TPMT_PUBLIC& have, const TPMT_PUBLIC& tmpl) {
  if (have.type != tmpl.type || have.nameAlg != tmpl.nameAlg) return false;
  if (have.objectAttributes != tmpl.objectAttributes) return false;
  if (have.authPolicy.size != tmpl.authPolicy.size ||
      std::memcmp(have.authPolicy.buffer, tmpl.authPolicy.buffer, tmpl.authPolicy.size) != 0)
    return false;
  if (tmpl.type == TPM2_ALG_RSA) {
    const auto& a = have.parameters.rsaDetail;
    const auto& b = tmpl.parameters.rsaDetail;
    auto exp = [](UINT32 e) { return e == 0 ? 65537u : e; };
    return symEqual(a.symmetric, b.symmetric) && a.scheme.scheme == b.scheme.scheme &&
           a.keyBits == b.keyBits && exp(a.exponent) == exp(b.exponent);
  }
  if (tmpl.type == TPM2_ALG_ECC) {
    const auto& a = have.parameters.eccDetail;
    const auto& b = tmpl.parameters.eccDetail;
    return symEqual(a.symmetric, b.symmetric) && a.scheme.scheme == b.scheme.scheme &&
           a.curveID == b.curveID && a.kdf.scheme == b.kdf.scheme;
  }
  return false;
}

}  // namespace keel
