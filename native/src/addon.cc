// keel_native: TPM 2.0 through tpm2-tss ESAPI, and Unix socket peer credentials.
#include <napi.h>

#include "device.h"
#include "peercred.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("TpmDevice", keel::Device::Define(env));
  exports.Set("peerCredentials", Napi::Function::New(env, keel::PeerCredentials, "peerCredentials"));
  exports.Set("peerGroups", Napi::Function::New(env, keel::PeerGroups, "peerGroups"));
  return exports;
}

}  // namespace

NODE_API_MODULE(keel_native, Init)
