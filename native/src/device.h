// The JavaScript face of one TPM connection: every method queues a job and
// returns a promise. Jobs of one device run one after another on the libuv
// thread pool, never on the main thread, and never two at once (ESAPI
// contexts are not thread-safe, and a TPM executes one command at a time).
#pragma once

#include <deque>
#include <functional>
#include <memory>

#include <napi.h>

#include "tpm_session.h"

namespace keel {

class Device : public Napi::ObjectWrap<Device> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Device(const Napi::CallbackInfo& info);

  using Work = std::function<keel::Value(TpmSession&)>;
  void jobDone();

 private:
  Napi::Value Submit(Napi::Env env, Work work, bool closes = false);
  void Pump();

  Napi::Value Connect(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Reconnect(const Napi::CallbackInfo& info);
  Napi::Value GetRandom(const Napi::CallbackInfo& info);
  Napi::Value PcrRead(const Napi::CallbackInfo& info);
  Napi::Value PcrExtend(const Napi::CallbackInfo& info);
  Napi::Value EkPublic(const Napi::CallbackInfo& info);
  Napi::Value ReadNv(const Napi::CallbackInfo& info);
  Napi::Value CreateAk(const Napi::CallbackInfo& info);
  Napi::Value LoadAk(const Napi::CallbackInfo& info);
  Napi::Value PersistAk(const Napi::CallbackInfo& info);
  Napi::Value AkFromPersistent(const Napi::CallbackInfo& info);
  Napi::Value EvictPersistent(const Napi::CallbackInfo& info);
  Napi::Value Quote(const Napi::CallbackInfo& info);
  Napi::Value ActivateCredential(const Napi::CallbackInfo& info);
  Napi::Value FlushAk(const Napi::CallbackInfo& info);
  Napi::Value LoadedHandles(const Napi::CallbackInfo& info);
  Napi::Value CreateAgentKey(const Napi::CallbackInfo& info);
  Napi::Value LoadAgentKey(const Napi::CallbackInfo& info);
  Napi::Value AgentKeyFromPersistent(const Napi::CallbackInfo& info);
  Napi::Value Certify(const Napi::CallbackInfo& info);
  Napi::Value Sign(const Napi::CallbackInfo& info);

  std::unique_ptr<TpmSession> tpm_;
  std::deque<Napi::AsyncWorker*> queue_;
  bool running_ = false;
  bool closing_ = false;  // close() was called: refuse new work
  friend class Job;
};

}  // namespace keel
