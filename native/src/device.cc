#include "device.h"

#include <optional>

#include "failure.h"

namespace keel {
namespace {

Napi::Value toJs(Napi::Env env, const Value& v) {
  switch (v.kind) {
    case Value::Kind::Undefined: return env.Undefined();
    case Value::Kind::Number: return Napi::Number::New(env, v.number);
    case Value::Kind::Bytes: return Napi::Buffer<uint8_t>::Copy(env, v.bytes.data(), v.bytes.size());
    case Value::Kind::Array: {
      Napi::Array a = Napi::Array::New(env, v.items.size());
      for (size_t i = 0; i < v.items.size(); i++) a.Set(static_cast<uint32_t>(i), toJs(env, v.items[i]));
      return a;
    }
    case Value::Kind::Object: {
      Napi::Object o = Napi::Object::New(env);
      for (const auto& [k, f] : v.fields) o.Set(k, toJs(env, f));
      return o;
    }
  }
  return env.Undefined();
}

// The rejection value: an Error with `kind`, `command`, `rc` and `rcText`
// for the TypeScript layer to turn into a typed error.
Napi::Value toJsError(Napi::Env env, const Failure& f, const std::string& tcti, bool broken = false) {
  Napi::Error e = Napi::Error::New(env, f.message);
  Napi::Object o = e.Value();
  o.Set("kind", failureKindName(f.kind));
  o.Set("command", f.command);
  o.Set("rc", Napi::Number::New(env, f.rc));
  o.Set("rcText", f.rc ? decodeRc(f.rc) : std::string());
  o.Set("tcti", tcti);
  // The connection is broken: nothing reaches the TPM until reconnect().
  o.Set("broken", Napi::Boolean::New(env, broken));
  return o;
}

uint32_t u32Arg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  double d = info[i].As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= 4294967295.0) || d != static_cast<double>(static_cast<uint32_t>(d)))
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be an unsigned 32-bit integer");
  return static_cast<uint32_t>(d);
}

Bytes bytesArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsBuffer()) throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a Buffer");
  auto b = info[i].As<Napi::Buffer<uint8_t>>();
  return Bytes(b.Data(), b.Data() + b.Length());
}

TPMI_ALG_HASH hashArg(Napi::Env env, Napi::Value v) {
  if (!v.IsNumber()) throw Napi::TypeError::New(env, "hash algorithm must be a number");
  uint32_t a = v.As<Napi::Number>().Uint32Value();
  if (a != TPM2_ALG_SHA1 && a != TPM2_ALG_SHA256 && a != TPM2_ALG_SHA384 && a != TPM2_ALG_SHA512)
    throw Napi::TypeError::New(env, "unsupported hash algorithm");
  return static_cast<TPMI_ALG_HASH>(a);
}

// [[alg, mask], ...] with mask bit n = PCR n (0..23).
std::vector<PcrSel> selArg(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsArray()) throw Napi::TypeError::New(env, "PCR selection must be an array");
  Napi::Array a = info[i].As<Napi::Array>();
  if (a.Length() == 0 || a.Length() > TPM2_NUM_PCR_BANKS) throw Napi::TypeError::New(env, "PCR selection has a bad number of banks");
  std::vector<PcrSel> out;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value e = a.Get(k);
    if (!e.IsArray()) throw Napi::TypeError::New(env, "PCR selection entries must be [alg, mask]");
    Napi::Array pair = e.As<Napi::Array>();
    TPMI_ALG_HASH alg = hashArg(env, pair.Get(0u));
    Napi::Value m = pair.Get(1u);
    if (!m.IsNumber()) throw Napi::TypeError::New(env, "PCR mask must be a number");
    uint32_t mask = m.As<Napi::Number>().Uint32Value();
    if (mask & 0xFF000000u) throw Napi::TypeError::New(env, "PCR index out of range 0..23");
    out.push_back(PcrSel{alg, mask});
  }
  return out;
}

EkKind ekArg(const Napi::CallbackInfo& info, size_t i) {
  uint32_t k = u32Arg(info, i, "EK kind");
  if (k > 2) throw Napi::TypeError::New(info.Env(), "unknown EK kind");
  return static_cast<EkKind>(k);
}

AkKind akArg(const Napi::CallbackInfo& info, size_t i) {
  uint32_t k = u32Arg(info, i, "AK kind");
  if (k > 1) throw Napi::TypeError::New(info.Env(), "unknown AK kind");
  return static_cast<AkKind>(k);
}

}  // namespace

// One queued TPM operation. The device's JS object is referenced until the
// job has settled, so a device cannot be collected with work in flight.
class Job : public Napi::AsyncWorker {
 public:
  Job(Napi::Env env, Device* dev, Device::Work work)
      : Napi::AsyncWorker(env, "keel:tpm"), dev_(dev), deferred_(Napi::Promise::Deferred::New(env)), work_(std::move(work)) {
    self_ = Napi::Persistent(dev->Value());
  }
  Napi::Promise Promise() const { return deferred_.Promise(); }

 protected:
  void Execute() override {
    try {
      result_ = work_(*dev_->tpm_);
    } catch (const Failure& f) {
      failure_ = f;
      dev_->tpm_->noteFailure(*failure_);
      SetError(failure_->message);
    } catch (const std::exception& e) {
      failure_ = Failure(FailureKind::Tpm, "", 0, std::string("internal error: ") + e.what());
      SetError(failure_->message);
    }
  }
  void OnOK() override {
    Napi::HandleScope scope(Env());
    deferred_.Resolve(toJs(Env(), result_));
    dev_->jobDone();
  }
  void OnError(const Napi::Error&) override {
    Napi::HandleScope scope(Env());
    deferred_.Reject(toJsError(Env(), *failure_, dev_->tpm_->tcti(), dev_->tpm_->broken()));
    dev_->jobDone();
  }

 private:
  Device* dev_;
  Napi::ObjectReference self_;
  Napi::Promise::Deferred deferred_;
  Device::Work work_;
  Value result_;
  std::optional<Failure> failure_;
};

Napi::Function Device::Define(Napi::Env env) {
  return DefineClass(env, "TpmDevice",
                     {
                         InstanceMethod<&Device::Connect>("connect"),
                         InstanceMethod<&Device::Close>("close"),
                         InstanceMethod<&Device::Reconnect>("reconnect"),
                         InstanceMethod<&Device::GetRandom>("getRandom"),
                         InstanceMethod<&Device::PcrRead>("pcrRead"),
                         InstanceMethod<&Device::PcrExtend>("pcrExtend"),
                         InstanceMethod<&Device::EkPublic>("ekPublic"),
                         InstanceMethod<&Device::ReadNv>("readNv"),
                         InstanceMethod<&Device::CreateAk>("createAk"),
                         InstanceMethod<&Device::LoadAk>("loadAk"),
                         InstanceMethod<&Device::PersistAk>("persistAk"),
                         InstanceMethod<&Device::AkFromPersistent>("akFromPersistent"),
                         InstanceMethod<&Device::EvictPersistent>("evictPersistent"),
                         InstanceMethod<&Device::Quote>("quote"),
                         InstanceMethod<&Device::ActivateCredential>("activateCredential"),
                         InstanceMethod<&Device::FlushAk>("flushAk"),
                         InstanceMethod<&Device::LoadedHandles>("loadedHandles"),
                         InstanceMethod<&Device::CreateAgentKey>("createAgentKey"),
                         InstanceMethod<&Device::LoadAgentKey>("loadAgentKey"),
                         InstanceMethod<&Device::AgentKeyFromPersistent>("agentKeyFromPersistent"),
                         InstanceMethod<&Device::Certify>("certify"),
                         InstanceMethod<&Device::Sign>("sign"),
                     });
}

Device::Device(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Device>(info) {
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "TCTI must be a string");
  tpm_ = std::make_unique<TpmSession>(info[0].As<Napi::String>().Utf8Value());
}

Napi::Value Device::Submit(Napi::Env env, Work work, bool closes) {
  if (closing_) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(toJsError(env, Failure(FailureKind::Closed, "", 0, "the TPM device is closed"), tpm_->tcti()));
    return d.Promise();
  }
  if (closes) closing_ = true;
  auto* job = new Job(env, this, std::move(work));
  Napi::Promise p = job->Promise();
  queue_.push_back(job);
  Pump();
  return p;
}

void Device::Pump() {
  if (running_ || queue_.empty()) return;
  running_ = true;
  Napi::AsyncWorker* next = queue_.front();
  queue_.pop_front();
  next->Queue();
}

void Device::jobDone() {
  running_ = false;
  Pump();
}

Napi::Value Device::Connect(const Napi::CallbackInfo& info) {
  return Submit(info.Env(), [](TpmSession& t) {
    t.connect();
    return keel::Value::undefined();
  });
}

Napi::Value Device::Reconnect(const Napi::CallbackInfo& info) {
  return Submit(info.Env(), [](TpmSession& t) {
    t.reconnect();
    return keel::Value::undefined();
  });
}

Napi::Value Device::Close(const Napi::CallbackInfo& info) {
  if (closing_) {
    // A second close() is a no-op, not an error.
    auto d = Napi::Promise::Deferred::New(info.Env());
    d.Resolve(info.Env().Undefined());
    return d.Promise();
  }
  return Submit(
      info.Env(),
      [](TpmSession& t) {
        t.close();
        return keel::Value::undefined();
      },
      true);
}

Napi::Value Device::GetRandom(const Napi::CallbackInfo& info) {
  uint32_t n = u32Arg(info, 0, "byte count");
  return Submit(info.Env(), [n](TpmSession& t) { return t.getRandom(n); });
}

Napi::Value Device::PcrRead(const Napi::CallbackInfo& info) {
  auto sels = selArg(info, 0);
  return Submit(info.Env(), [sels](TpmSession& t) { return t.pcrRead(sels); });
}

Napi::Value Device::PcrExtend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t pcr = u32Arg(info, 0, "PCR index");
  if (pcr > 23) throw Napi::TypeError::New(env, "PCR index out of range 0..23");
  if (info.Length() < 2 || !info[1].IsArray()) throw Napi::TypeError::New(env, "digests must be an array");
  Napi::Array a = info[1].As<Napi::Array>();
  std::vector<std::pair<TPMI_ALG_HASH, Bytes>> digests;
  for (uint32_t k = 0; k < a.Length(); k++) {
    Napi::Value e = a.Get(k);
    if (!e.IsArray()) throw Napi::TypeError::New(env, "digest entries must be [alg, Buffer]");
    Napi::Array pair = e.As<Napi::Array>();
    TPMI_ALG_HASH alg = hashArg(env, pair.Get(0u));
    Napi::Value b = pair.Get(1u);
    if (!b.IsBuffer()) throw Napi::TypeError::New(env, "digest must be a Buffer");
    auto buf = b.As<Napi::Buffer<uint8_t>>();
    digests.emplace_back(alg, Bytes(buf.Data(), buf.Data() + buf.Length()));
  }
  return Submit(env, [pcr, digests](TpmSession& t) {
    t.pcrExtend(pcr, digests);
    return keel::Value::undefined();
  });
}

Napi::Value Device::EkPublic(const Napi::CallbackInfo& info) {
  EkKind k = ekArg(info, 0);
  return Submit(info.Env(), [k](TpmSession& t) { return t.ekPublic(k); });
}

Napi::Value Device::ReadNv(const Napi::CallbackInfo& info) {
  uint32_t index = u32Arg(info, 0, "NV index");
  if ((index >> 24) != TPM2_HT_NV_INDEX) throw Napi::TypeError::New(info.Env(), "not an NV index handle (0x01xxxxxx)");
  return Submit(info.Env(), [index](TpmSession& t) { return t.readNv(index); });
}

Napi::Value Device::CreateAk(const Napi::CallbackInfo& info) {
  EkKind ek = ekArg(info, 0);
  AkKind ak = akArg(info, 1);
  return Submit(info.Env(), [ek, ak](TpmSession& t) { return t.createAk(ek, ak); });
}

Napi::Value Device::LoadAk(const Napi::CallbackInfo& info) {
  EkKind ek = ekArg(info, 0);
  Bytes pub = bytesArg(info, 1, "AK public");
  Bytes priv = bytesArg(info, 2, "AK private");
  return Submit(info.Env(), [ek, pub, priv](TpmSession& t) { return t.loadAk(ek, pub, priv); });
}

static uint32_t persistentArg(const Napi::CallbackInfo& info, size_t i) {
  uint32_t h = u32Arg(info, i, "persistent handle");
  if ((h >> 24) != TPM2_HT_PERSISTENT) throw Napi::TypeError::New(info.Env(), "not a persistent handle (0x81xxxxxx)");
  return h;
}

Napi::Value Device::PersistAk(const Napi::CallbackInfo& info) {
  uint32_t id = u32Arg(info, 0, "AK handle");
  uint32_t h = persistentArg(info, 1);
  return Submit(info.Env(), [id, h](TpmSession& t) {
    t.persistAk(id, h);
    return keel::Value::undefined();
  });
}

Napi::Value Device::AkFromPersistent(const Napi::CallbackInfo& info) {
  uint32_t h = persistentArg(info, 0);
  return Submit(info.Env(), [h](TpmSession& t) { return t.akFromPersistent(h); });
}

Napi::Value Device::EvictPersistent(const Napi::CallbackInfo& info) {
  uint32_t h = persistentArg(info, 0);
  return Submit(info.Env(), [h](TpmSession& t) {
    t.evictPersistent(h);
    return keel::Value::undefined();
  });
}

Napi::Value Device::Quote(const Napi::CallbackInfo& info) {
  uint32_t id = u32Arg(info, 0, "AK handle");
  auto sels = selArg(info, 1);
  Bytes nonce = bytesArg(info, 2, "nonce");
  return Submit(info.Env(), [id, sels, nonce](TpmSession& t) { return t.quote(id, sels, nonce); });
}

Napi::Value Device::ActivateCredential(const Napi::CallbackInfo& info) {
  uint32_t id = u32Arg(info, 0, "AK handle");
  EkKind ek = ekArg(info, 1);
  Bytes blob = bytesArg(info, 2, "credentialBlob");
  Bytes secret = bytesArg(info, 3, "encryptedSecret");
  return Submit(info.Env(),
                [id, ek, blob, secret](TpmSession& t) { return t.activateCredential(id, ek, blob, secret); });
}

Napi::Value Device::FlushAk(const Napi::CallbackInfo& info) {
  uint32_t id = u32Arg(info, 0, "AK handle");
  return Submit(info.Env(), [id](TpmSession& t) {
    t.flushAk(id);
    return keel::Value::undefined();
  });
}

Napi::Value Device::LoadedHandles(const Napi::CallbackInfo& info) {
  return Submit(info.Env(), [](TpmSession& t) { return t.loadedHandles(); });
}

Napi::Value Device::CreateAgentKey(const Napi::CallbackInfo& info) {
  EkKind ek = ekArg(info, 0);
  return Submit(info.Env(), [ek](TpmSession& t) { return t.createAgentKey(ek); });
}

Napi::Value Device::LoadAgentKey(const Napi::CallbackInfo& info) {
  EkKind ek = ekArg(info, 0);
  Bytes pub = bytesArg(info, 1, "agent key public");
  Bytes priv = bytesArg(info, 2, "agent key private");
  return Submit(info.Env(), [ek, pub, priv](TpmSession& t) { return t.loadAgentKey(ek, pub, priv); });
}

Napi::Value Device::AgentKeyFromPersistent(const Napi::CallbackInfo& info) {
  uint32_t h = persistentArg(info, 0);
  return Submit(info.Env(), [h](TpmSession& t) { return t.agentKeyFromPersistent(h); });
}

Napi::Value Device::Certify(const Napi::CallbackInfo& info) {
  uint32_t obj = u32Arg(info, 0, "object handle");
  uint32_t akId = u32Arg(info, 1, "AK handle");
  Bytes nonce = bytesArg(info, 2, "nonce");
  return Submit(info.Env(), [obj, akId, nonce](TpmSession& t) { return t.certify(obj, akId, nonce); });
}

Napi::Value Device::Sign(const Napi::CallbackInfo& info) {
  uint32_t key = u32Arg(info, 0, "key handle");
  Bytes digest = bytesArg(info, 1, "digest");
  return Submit(info.Env(), [key, digest](TpmSession& t) { return t.sign(key, digest); });
}

}  // namespace keel
