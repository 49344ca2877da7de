#include "failure.h"

#include <tss2/tss2_rc.h>

namespace keel {

const char* failureKindName(FailureKind k) {
  switch (k) {
    case FailureKind::Tpm: return "tpm";
    case FailureKind::Connection: return "connection";
    case FailureKind::Closed: return "closed";
    case FailureKind::Argument: return "argument";
    case FailureKind::StaleHandle: return "stale-handle";
    case FailureKind::Mismatch: return "mismatch";
  }
  return "tpm";
}

std::string decodeRc(TSS2_RC rc) {
  const char* text = Tss2_RC_Decode(rc);
  return text ? std::string(text) : std::string("unknown response code");
}

void throwTpm(const char* command, TSS2_RC rc) {
  throw Failure(FailureKind::Tpm, command, rc, std::string(command) + " failed: " + decodeRc(rc));
}

}  // namespace keel
