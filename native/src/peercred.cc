// The kernel's record of who is at the other end of a connected Unix socket.
// getsockopt is a syscall that does not block, so these are synchronous.
#include "peercred.h"

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <sys/socket.h>
#include <sys/types.h>

namespace keel {
namespace {

int fdArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(info.Env(), "fd must be a number");
  double d = info[0].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 2147483647.0) || d != static_cast<double>(static_cast<int>(d)))
    throw Napi::TypeError::New(info.Env(), "fd must be a non-negative integer");
  return static_cast<int>(d);
}

const char* errnoName(int e) {
  switch (e) {
    case EBADF: return "EBADF";
    case ENOTSOCK: return "ENOTSOCK";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EINVAL: return "EINVAL";
    case ENOTCONN: return "ENOTCONN";
    case ERANGE: return "ERANGE";
    default: return "EUNKNOWN";
  }
}

[[noreturn]] void throwErrno(Napi::Env env, const char* what, int e) {
  Napi::Error err = Napi::Error::New(env, std::string(what) + " failed: " + std::strerror(e));
  err.Set("code", errnoName(e));
  err.Set("errno", Napi::Number::New(env, e));
  err.Set("syscall", "getsockopt");
  throw err;
}

}  // namespace

Napi::Value PeerCredentials(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = fdArg(info);
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) throwErrno(env, "SO_PEERCRED", errno);
  Napi::Object o = Napi::Object::New(env);
  o.Set("pid", Napi::Number::New(env, cred.pid));
  o.Set("uid", Napi::Number::New(env, cred.uid));
  o.Set("gid", Napi::Number::New(env, cred.gid));
  return o;
}

Napi::Value PeerGroups(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = fdArg(info);
#ifdef SO_PEERGROUPS
  std::vector<gid_t> groups(32);
  for (int attempt = 0; attempt < 4; attempt++) {
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      size_t n = len / sizeof(gid_t);
      Napi::Array a = Napi::Array::New(env, n);
      for (size_t i = 0; i < n; i++) a.Set(static_cast<uint32_t>(i), Napi::Number::New(env, groups[i]));
      return a;
    }
    // ERANGE: the kernel wrote the size it needs into len.
    if (errno != ERANGE) throwErrno(env, "SO_PEERGROUPS", errno);
    size_t need = len / sizeof(gid_t);
    groups.resize(need > groups.size() ? need : groups.size() * 2);
  }
  throwErrno(env, "SO_PEERGROUPS", ERANGE);
#else
  throwErrno(env, "SO_PEERGROUPS", ENOPROTOOPT);
#endif
}

}  // namespace keel
