#pragma once
#include <napi.h>

namespace keel {
// peerCredentials(fd) -> { pid, uid, gid } (SO_PEERCRED)
Napi::Value PeerCredentials(const Napi::CallbackInfo& info);
// peerGroups(fd) -> number[] (SO_PEERGROUPS, Linux >= 4.13)
Napi::Value PeerGroups(const Napi::CallbackInfo& info);
}  // namespace keel
