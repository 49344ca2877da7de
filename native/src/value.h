// A small value tree built on the worker thread (where N-API may not be
// touched) and turned into JavaScript values on the main thread.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace keel {

struct Value {
  enum class Kind { Undefined, Number, Bytes, Array, Object };
  Kind kind = Kind::Undefined;
  double number = 0;
  std::vector<uint8_t> bytes;
  std::vector<Value> items;
  std::vector<std::pair<std::string, Value>> fields;

  static Value undefined() { return Value{}; }
  static Value num(double n) {
    Value v;
    v.kind = Kind::Number;
    v.number = n;
    return v;
  }
  static Value buf(const uint8_t* p, size_t n) {
    Value v;
    v.kind = Kind::Bytes;
    v.bytes.assign(p, p + n);
    return v;
  }
  static Value buf(std::vector<uint8_t> b) {
    Value v;
    v.kind = Kind::Bytes;
    v.bytes = std::move(b);
    return v;
  }
  static Value array() {
    Value v;
    v.kind = Kind::Array;
    return v;
  }
  static Value object() {
    Value v;
    v.kind = Kind::Object;
    return v;
  }
  Value& set(std::string key, Value v) {
    fields.emplace_back(std::move(key), std::move(v));
    return *this;
  }
  Value& push(Value v) {
    items.push_back(std::move(v));
    return *this;
  }
};

}  // namespace keel
