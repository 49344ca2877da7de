// A failure inside a TPM job, carried from the worker thread to the promise
// rejection. `kind` tells the TypeScript side which typed error to build.
#pragma once

#include <exception>
#include <string>
#include <tss2/tss2_common.h>

namespace keel {

enum class FailureKind {
  Tpm,         // the TPM or the TSS returned a response code
  Connection,  // the TCTI could not be loaded or could not reach the TPM
  Closed,      // the device was closed
  Argument,    // bad input that only the C++ side can see (e.g. a blob too large)
  StaleHandle, // an AK handle that was flushed or belongs to nobody
  Mismatch,    // an object is not what was asked for (e.g. a persistent key is no AK)
};

const char* failureKindName(FailureKind k);

struct Failure : std::exception {
  FailureKind kind;
  std::string command;  // TPM command or TSS call, e.g. "TPM2_Quote"
  TSS2_RC rc;           // 0 when not a response code
  std::string message;

  Failure(FailureKind k, std::string cmd, TSS2_RC code, std::string msg)
      : kind(k), command(std::move(cmd)), rc(code), message(std::move(msg)) {}
  const char* what() const noexcept override { return message.c_str(); }
};

// The text tss2-rc gives for a response code, copied (the library's buffer is reused).
std::string decodeRc(TSS2_RC rc);

[[noreturn]] void throwTpm(const char* command, TSS2_RC rc);

inline void check(TSS2_RC rc, const char* command) {
  if (rc != TSS2_RC_SUCCESS) throwTpm(command, rc);
}

// Strips the layer bits and says whether rc is TPM_RC_HANDLE (format 1, any index).
inline bool isHandleError(TSS2_RC rc) {
  TSS2_RC base = rc & 0xFFFF;
  return (base & 0x80) != 0 && (base & 0x3F) == 0x0B;
}

}  // namespace keel
