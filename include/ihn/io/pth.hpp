// Reading PyTorch `.pth` checkpoints (torch.save) into LibTorch modules, by parameter name.
//
// The official R2Gen / R2GenCMN trainers save
//   torch.save({'epoch': e, 'state_dict': model.state_dict(), 'optimizer': ..., 'monitor_best': m})
// and `torch::pickle_load` cannot read that: state_dict() is a `collections.OrderedDict`, which
// LibTorch's unpickler turns into None. This header carries a small unpickler for the subset that
// torch.save writes (protocol 2; dicts, lists, tuples, OrderedDict, numbers, strings, tensors;
// anything else becomes an opaque object), for both the zip format (torch >= 1.6, records read
// with ZipReader, io/zip.hpp) and the legacy format (a sequence of pickles followed by the raw
// storages).
//
// Files are untrusted input (docs/reliability.md): declared sizes are checked against the file
// before anything is allocated (data.pkl at most kMaxPickleBytes, each storage at most its
// record, which must lie inside the file), every zip record's CRC-32 is verified, the object
// graph may hold at most kMaxObjects objects nested at most kMaxDepth deep and no cycles
// (checked without recursion), and every tensor's sizes, strides and offset must stay inside
// its storage. Each violation is a pth_error naming the file (and the record or tensor).
//
//   auto report = ihn::io::load_pth(*model, "model_best.pth");    // strict: throws on mismatch
//   auto ckpt = ihn::io::read_pth("model_best.pth");              // everything, as PyObject
//   int64_t epoch = ckpt->at("epoch").as_int();
#pragma once

#include <torch/torch.h>

#include <ihn/io/zip.hpp>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ihn {
inline namespace v0 {
namespace io {

/// Raised for unreadable or unsupported checkpoints and for strict-mode load mismatches.
struct pth_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct PyObject;
using PyObjectPtr = std::shared_ptr<PyObject>;

/// A storage referenced by tensors: loaded at once (zip) or after the pickle (legacy format).
struct PyStorage {
  std::string key;
  at::ScalarType dtype = at::kFloat;
  int64_t numel = 0;
  torch::Tensor data;  ///< 1-d, filled when read
};

/// The unpickled value: a small tagged union of what torch.save writes.
struct PyObject {
  enum class Kind {
    None,
    Bool,
    Int,
    Float,
    String,
    Bytes,
    Tuple,
    List,
    Dict,
    Tensor,
    Global,
    Storage,
    Object
  };
  Kind kind = Kind::None;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;                ///< String, Bytes, Global/Object: "module.name"
  std::vector<PyObjectPtr> items;  ///< Tuple, List; Object: its reduce arguments
  std::vector<std::pair<PyObjectPtr, PyObjectPtr>> entries;  ///< Dict (insertion order)
  PyObjectPtr state;                                         ///< Object: BUILD state
  torch::Tensor tensor;                                      ///< Tensor, once materialised
  std::shared_ptr<PyStorage> storage;                        ///< Tensor/Storage
  int64_t offset = 0;
  std::vector<int64_t> sizes, strides;

  static PyObjectPtr make(Kind k) {
    auto p = std::make_shared<PyObject>();
    p->kind = k;
    return p;
  }
  bool is_dict() const { return kind == Kind::Dict; }
  bool contains(const std::string& key) const {
    for (const auto& e : entries)
      if (e.first->kind == Kind::String && e.first->text == key) return true;
    return false;
  }
  const PyObject& at(const std::string& key) const {
    if (kind != Kind::Dict) throw pth_error("ihn::io: looked up key '" + key + "' in a non-dict");
    for (const auto& e : entries)
      if (e.first->kind == Kind::String && e.first->text == key) return *e.second;
    throw pth_error("ihn::io: key '" + key + "' not found");
  }
  int64_t as_int() const {
    if (kind == Kind::Int) return integer;
    if (kind == Kind::Bool) return boolean ? 1 : 0;
    throw pth_error("ihn::io: value is not an int");
  }
  double as_double() const {
    if (kind == Kind::Float) return real;
    if (kind == Kind::Int) return static_cast<double>(integer);
    throw pth_error("ihn::io: value is not a number");
  }
};

/// Limits on what a file may declare. data.pkl holds only the structure (names, shapes, numbers):
/// the authors' R2Gen checkpoint with its optimizer state has a 60 KB one, and a pickle of
/// 64 MiB would already describe millions of tensors. Each pickle opcode creates at most one
/// object of ~250 bytes, so kMaxObjects bounds the unpickler's memory at ~0.5 GB; a real
/// checkpoint has tens of thousands. Real nesting is ~6 deep (dict, OrderedDict, tensor
/// arguments, shape tuple); kMaxDepth keeps every walk and destructor far from the stack limit.
inline constexpr uint64_t kMaxPickleBytes = 64u << 20;
inline constexpr size_t kMaxObjects = size_t{1} << 21;
inline constexpr size_t kMaxDepth = 1000;

namespace detail {

inline at::ScalarType storage_dtype(const std::string& global) {
  static const std::map<std::string, at::ScalarType> table = {
      {"torch.FloatStorage", at::kFloat},
      {"torch.DoubleStorage", at::kDouble},
      {"torch.HalfStorage", at::kHalf},
      {"torch.BFloat16Storage", at::kBFloat16},
      {"torch.LongStorage", at::kLong},
      {"torch.IntStorage", at::kInt},
      {"torch.ShortStorage", at::kShort},
      {"torch.CharStorage", at::kChar},
      {"torch.ByteStorage", at::kByte},
      {"torch.BoolStorage", at::kBool},
      {"torch.ComplexFloatStorage", at::kComplexFloat},
      {"torch.ComplexDoubleStorage", at::kComplexDouble}};
  auto it = table.find(global);
  if (it == table.end()) throw pth_error("ihn::io: unsupported storage type " + global);
  return it->second;
}

/// Unpickles one pickle from `data`; `persistent_load` resolves BINPERSID ids (storages).
/// `pos` is advanced past the STOP opcode (legacy files hold several pickles in a row).
class Unpickler {
 public:
  using PersistentLoad = std::function<PyObjectPtr(const PyObjectPtr&)>;

  Unpickler(const char* data, size_t size, PersistentLoad persistent_load)
      : data_(data), size_(size), persistent_load_(std::move(persistent_load)) {}

  /// One pickle; its object graph is checked (size, depth, no cycles) before it is returned.
  /// Whatever goes wrong, every object it created is taken apart one by one, so that neither a
  /// cycle (leak) nor 100k nested lists (recursive destructors) survive the call.
  PyObjectPtr load(size_t& pos) {
    pos_ = pos;
    stack_.clear();
    marks_.clear();
    memo_.clear();
    created_.clear();
    try {
      auto root = run(pos);
      auto reachable = check_graph(root);
      stack_.clear();
      memo_.clear();
      for (auto& p : created_)
        if (!reachable.count(p.get())) dismantle(*p);  // garbage, e.g. a dropped reduce argument
      created_.clear();
      return root;
    } catch (...) {
      stack_.clear();
      memo_.clear();
      for (auto& p : created_) dismantle(*p);
      created_.clear();
      throw;
    }
  }

  /// Every object reachable from `root`; throws on a cycle or on nesting deeper than kMaxDepth.
  /// Iterative post-order walk: heights are computed once per object (shared objects, e.g.
  /// memoised ones, are not walked twice, so a "billion laughs" graph costs linear time).
  std::unordered_map<const PyObject*, size_t> check_graph(const PyObjectPtr& root) const {
    std::unordered_map<const PyObject*, size_t> height;  // finished objects
    std::unordered_map<const PyObject*, bool> on_path;
    struct Frame {
      const PyObject* node;
      size_t next;
      size_t height;
    };
    auto child = [](const PyObject* p, size_t i) -> const PyObject* {
      if (i < p->items.size()) return p->items[i].get();
      i -= p->items.size();
      if (i < 2 * p->entries.size())
        return (i % 2 ? p->entries[i / 2].second : p->entries[i / 2].first).get();
      return i == 2 * p->entries.size() ? p->state.get() : nullptr;
    };
    std::vector<Frame> path{{root.get(), 0, 1}};
    on_path[root.get()] = true;
    while (!path.empty()) {
      Frame& f = path.back();
      const size_t children = f.node->items.size() + 2 * f.node->entries.size() + 1;
      if (f.next < children) {
        const PyObject* c = child(f.node, f.next++);
        if (!c) continue;
        if (on_path[c]) throw error("the pickled object contains itself (a cycle)");
        auto done = height.find(c);
        if (done != height.end()) {
          f.height = std::max(f.height, done->second + 1);
        } else {
          on_path[c] = true;
          path.push_back({c, 0, 1});  // invalidates f
        }
        if (path.back().height > kMaxDepth || path.size() > kMaxDepth)
          throw error("objects nested more than " + std::to_string(kMaxDepth) + " deep");
        continue;
      }
      const Frame finished = f;
      path.pop_back();
      on_path[finished.node] = false;
      height[finished.node] = finished.height;
      if (!path.empty()) path.back().height = std::max(path.back().height, finished.height + 1);
    }
    if (height[root.get()] > kMaxDepth)
      throw error("objects nested more than " + std::to_string(kMaxDepth) + " deep");
    return height;
  }

 private:
  static void dismantle(PyObject& p) {
    p.items.clear();
    p.entries.clear();
    p.state.reset();
  }

  PyObjectPtr run(size_t& pos) {
    for (;;) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80:
          byte();
          break;  // PROTO
        case 0x95:
          bytes(8);
          break;  // FRAME
        case '}':
          push(PyObject::make(PyObject::Kind::Dict));
          break;
        case ']':
          push(PyObject::make(PyObject::Kind::List));
          break;
        case ')':
          push(PyObject::make(PyObject::Kind::Tuple));
          break;
        case '(':
          marks_.push_back(stack_.size());
          break;
        case 'N':
          push(PyObject::make(PyObject::Kind::None));
          break;
        case 0x88:
          push(make_bool(true));
          break;
        case 0x89:
          push(make_bool(false));
          break;
        case 'K':
          push(make_int(byte()));
          break;
        case 'M':
          push(make_int(static_cast<uint16_t>(le(2))));
          break;
        case 'J':
          push(make_int(static_cast<int32_t>(static_cast<uint32_t>(le(4)))));
          break;
        case 0x8a:
          push(make_long(byte()));
          break;  // LONG1
        case 0x8b:
          push(make_long(static_cast<size_t>(le(4))));
          break;     // LONG4
        case 'G': {  // BINFLOAT, big-endian
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | byte();
          auto p = PyObject::make(PyObject::Kind::Float);
          std::memcpy(&p->real, &bits, 8);
          push(p);
          break;
        }
        case 'X':
          push(make_string(static_cast<size_t>(le(4)), PyObject::Kind::String));
          break;
        case 0x8c:
          push(make_string(byte(), PyObject::Kind::String));
          break;
        case 'T':
          push(make_string(static_cast<size_t>(le(4)), PyObject::Kind::String));
          break;
        case 'U':
          push(make_string(byte(), PyObject::Kind::String));
          break;
        case 'B':
          push(make_string(static_cast<size_t>(le(4)), PyObject::Kind::Bytes));
          break;
        case 'C':
          push(make_string(byte(), PyObject::Kind::Bytes));
          break;
        case 0x8e:
          push(make_string(static_cast<size_t>(le(8)), PyObject::Kind::Bytes));
          break;
        case 'c': {  // GLOBAL module\nname\n
          auto module = line();
          auto name = line();
          auto g = PyObject::make(PyObject::Kind::Global);
          g->text = module + "." + name;
          push(g);
          break;
        }
        case 0x93: {  // STACK_GLOBAL
          auto name = pop();
          auto module = pop();
          auto g = PyObject::make(PyObject::Kind::Global);
          g->text = module->text + "." + name->text;
          push(g);
          break;
        }
        case 'q':
          memo_[byte()] = top();
          break;
        case 'r':
          memo_[static_cast<uint32_t>(le(4))] = top();
          break;
        case 0x94:
          memo_[static_cast<uint32_t>(memo_.size())] = top();
          break;
        case 'h':
          push(memo(byte()));
          break;
        case 'j':
          push(memo(static_cast<uint32_t>(le(4))));
          break;
        case 't':
          push(make_seq(PyObject::Kind::Tuple, pop_mark()));
          break;
        case 0x85:
        case 0x86:
        case 0x87: {
          const size_t n = op - 0x84;
          std::vector<PyObjectPtr> items(n);
          for (size_t i = n; i-- > 0;) items[i] = pop();
          push(make_seq(PyObject::Kind::Tuple, std::move(items)));
          break;
        }
        case 'l':
          push(make_seq(PyObject::Kind::List, pop_mark()));
          break;
        case 'd': {
          auto items = pop_mark();
          auto d = PyObject::make(PyObject::Kind::Dict);
          for (size_t i = 0; i + 1 < items.size(); i += 2)
            d->entries.emplace_back(items[i], items[i + 1]);
          push(d);
          break;
        }
        case 'a': {
          auto v = pop();
          top()->items.push_back(v);
          break;
        }
        case 'e': {
          auto items = pop_mark();
          auto& list = top()->items;
          list.insert(list.end(), items.begin(), items.end());
          break;
        }
        case 's': {
          auto v = pop();
          auto k = pop();
          set_item(top(), k, v);
          break;
        }
        case 'u': {
          auto items = pop_mark();
          for (size_t i = 0; i + 1 < items.size(); i += 2) set_item(top(), items[i], items[i + 1]);
          break;
        }
        case 'Q':
          push(persistent_load_(pop()));
          break;  // BINPERSID
        case 'R': {
          auto args = pop();
          auto callable = pop();
          push(reduce(callable, args));
          break;
        }
        case 0x81: {  // NEWOBJ cls args
          auto args = pop();
          auto cls = pop();
          push(reduce(cls, args));
          break;
        }
        case 'b': {  // BUILD: OrderedDict's state (_metadata) is dropped, objects keep theirs
          auto state = pop();
          if (top()->kind == PyObject::Kind::Object) top()->state = state;
          break;
        }
        case '.': {
          pos = pos_;
          if (stack_.size() != 1)
            throw error("STOP with " + std::to_string(stack_.size()) + " stack items");
          return stack_.back();
        }
        default: {
          std::ostringstream msg;
          msg << "unsupported pickle opcode 0x" << std::hex << static_cast<int>(op);
          throw error(msg.str());
        }
      }
    }
  }

  pth_error error(const std::string& what) const {
    return pth_error("ihn::io: pickle at byte " + std::to_string(pos_) + ": " + what);
  }
  uint8_t byte() {
    if (pos_ >= size_) throw error("unexpected end of data");
    return static_cast<uint8_t>(data_[pos_++]);
  }
  const char* bytes(size_t n) {
    if (n > size_ - pos_) throw error("unexpected end of data");
    const char* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  uint64_t le(int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(byte()) << (8 * i);
    return v;
  }
  std::string line() {
    std::string s;
    for (char c; (c = static_cast<char>(byte())) != '\n';) s.push_back(c);
    return s;
  }
  void push(PyObjectPtr p) {
    if (created_.size() >= kMaxObjects)
      throw error("more than " + std::to_string(kMaxObjects) + " objects");
    created_.push_back(p);
    stack_.push_back(std::move(p));
  }
  PyObjectPtr pop() {
    if (stack_.empty()) throw error("pop from an empty stack");
    auto p = stack_.back();
    stack_.pop_back();
    return p;
  }
  PyObjectPtr top() {
    if (stack_.empty()) throw error("empty stack");
    return stack_.back();
  }
  std::vector<PyObjectPtr> pop_mark() {
    if (marks_.empty()) throw error("no MARK");
    const size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyObjectPtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  PyObjectPtr memo(uint32_t i) {
    auto it = memo_.find(i);
    if (it == memo_.end()) throw error("memo " + std::to_string(i) + " not found");
    return it->second;
  }
  static PyObjectPtr make_bool(bool b) {
    auto p = PyObject::make(PyObject::Kind::Bool);
    p->boolean = b;
    return p;
  }
  static PyObjectPtr make_int(int64_t v) {
    auto p = PyObject::make(PyObject::Kind::Int);
    p->integer = v;
    return p;
  }
  PyObjectPtr make_long(size_t n) {
    const char* b = bytes(n);
    if (n > 8) {  // e.g. the legacy format's magic number: kept as raw little-endian bytes
      auto p = make_int(0);
      p->text.assign(b, n);
      return p;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<uint8_t>(b[i])) << (8 * i);
    if (n > 0 && n < 8 && (static_cast<uint8_t>(b[n - 1]) & 0x80)) v |= ~uint64_t{0} << (8 * n);
    return make_int(static_cast<int64_t>(v));
  }
  PyObjectPtr make_string(size_t n, PyObject::Kind kind) {
    auto p = PyObject::make(kind);
    p->text.assign(bytes(n), n);
    return p;
  }
  static PyObjectPtr make_seq(PyObject::Kind kind, std::vector<PyObjectPtr> items) {
    auto p = PyObject::make(kind);
    p->items = std::move(items);
    return p;
  }
  void set_item(const PyObjectPtr& target, PyObjectPtr k, PyObjectPtr v) {
    if (target->kind != PyObject::Kind::Dict) {
      // e.g. an opaque object restored by SETITEMS: keep the pairs for inspection.
      if (target->kind != PyObject::Kind::Object) throw error("SETITEM on a non-dict");
    }
    target->entries.emplace_back(std::move(k), std::move(v));
  }
  PyObjectPtr reduce(const PyObjectPtr& callable, const PyObjectPtr& args) {
    const std::string name = callable->kind == PyObject::Kind::Global ? callable->text : "";
    const auto& a = args->items;
    if (name == "collections.OrderedDict") return PyObject::make(PyObject::Kind::Dict);
    // LibTorch's own pickler (torch::pickle_save) tags containers with their static types.
    if (name == "torch.jit._pickle.restore_type_tag" || name == "torch.jit._pickle.build_intlist" ||
        name == "torch.jit._pickle.build_doublelist" ||
        name == "torch.jit._pickle.build_boollist" ||
        name == "torch.jit._pickle.build_tensorlist") {
      if (a.empty()) throw error(name + ": no arguments");
      return a[0];
    }
    if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
      if (a.size() < 4 || a[0]->kind != PyObject::Kind::Storage)
        throw error(name + ": bad arguments");
      auto t = PyObject::make(PyObject::Kind::Tensor);
      t->storage = a[0]->storage;
      t->offset = a[1]->as_int();
      for (const auto& s : a[2]->items) t->sizes.push_back(s->as_int());
      for (const auto& s : a[3]->items) t->strides.push_back(s->as_int());
      return t;
    }
    if (name == "torch._utils._rebuild_parameter" ||
        name == "torch._utils._rebuild_parameter_with_state") {
      if (a.empty()) throw error(name + ": no arguments");
      return a[0];
    }
    auto obj = PyObject::make(PyObject::Kind::Object);
    obj->text = name;
    obj->items = a;
    return obj;
  }

  const char* data_;
  size_t size_;
  size_t pos_ = 0;
  PersistentLoad persistent_load_;
  std::vector<PyObjectPtr> stack_;
  std::vector<size_t> marks_;
  std::map<uint32_t, PyObjectPtr> memo_;
  std::vector<PyObjectPtr> created_;  ///< every object pushed by this load, to take apart
};

/// persistent id ('storage', StorageType, key, location, numel[, view_metadata]) -> Storage.
inline PyObjectPtr storage_from_pid(const PyObjectPtr& pid,
                                    std::map<std::string, std::shared_ptr<PyStorage>>& storages) {
  const auto& a = pid->items;
  if (pid->kind != PyObject::Kind::Tuple || a.size() < 5 || a[0]->text != "storage")
    throw pth_error("ihn::io: unsupported persistent id (expected a storage)");
  if (a.size() > 5 && a[5]->kind != PyObject::Kind::None)
    throw pth_error("ihn::io: storage views (legacy view_metadata) are not supported");
  auto& s = storages[a[2]->text];
  if (!s) {
    s = std::make_shared<PyStorage>();
    s->key = a[2]->text;
    s->dtype = storage_dtype(a[1]->text);
    s->numel = a[4]->as_int();
    if (s->numel < 0)
      throw pth_error("ihn::io: storage '" + s->key + "' declares " + std::to_string(s->numel) +
                      " elements");
  }
  auto p = PyObject::make(PyObject::Kind::Storage);
  p->storage = s;
  return p;
}

/// numel * element size, or a pth_error when it overflows.
inline size_t storage_bytes(const PyStorage& s, int64_t numel, const std::string& where) {
  size_t bytes = 0;
  if (numel < 0 ||
      __builtin_mul_overflow(static_cast<uint64_t>(numel), c10::elementSize(s.dtype), &bytes))
    throw pth_error("ihn::io: " + where + ": storage '" + s.key + "' declares " +
                    std::to_string(numel) + " elements, an impossible size");
  return bytes;
}

/// The tensor's view (sizes, strides, offset) must read inside its storage: checked with
/// overflow-safe arithmetic before as_strided, so a corrupted stride is an error, not a read
/// out of bounds.
inline void check_view(const PyObject& t, const std::string& where) {
  const int64_t numel = t.storage->data.numel();
  auto fail = [&](const std::string& what) {
    std::ostringstream msg;
    msg << "ihn::io: " << where << ": a tensor on storage '" << t.storage->key << "' (sizes "
        << c10::IntArrayRef(t.sizes) << ", strides " << c10::IntArrayRef(t.strides) << ", offset "
        << t.offset << ") " << what << " (storage of " << numel
        << " elements); the file is corrupt";
    throw pth_error(msg.str());
  };
  if (t.sizes.size() != t.strides.size()) fail("has as many sizes as strides");
  if (t.offset < 0) fail("has a negative offset");
  int64_t last = t.offset;  // index of the view's last element
  bool empty = false;
  for (size_t d = 0; d < t.sizes.size(); ++d) {
    if (t.sizes[d] < 0 || t.strides[d] < 0) fail("has a negative size or stride");
    if (t.sizes[d] == 0) empty = true;
  }
  if (empty) {
    if (t.offset > numel) fail("starts past its storage");
    return;
  }
  for (size_t d = 0; d < t.sizes.size(); ++d) {
    int64_t step = 0;
    if (__builtin_mul_overflow(t.sizes[d] - 1, t.strides[d], &step) ||
        __builtin_add_overflow(last, step, &last))
      fail("spans more elements than int64 can count");
  }
  if (last >= numel) fail("reads past the end of its storage");
}

/// Every Tensor node reachable from `root` (checked by Unpickler::load: acyclic, shallow) gets
/// its tensor = storage.as_strided(sizes, strides, offset), without recursion.
inline void materialise(const PyObjectPtr& root, const std::string& where) {
  std::vector<PyObject*> todo{root.get()};
  std::unordered_map<const PyObject*, bool> seen;
  while (!todo.empty()) {
    PyObject* p = todo.back();
    todo.pop_back();
    if (!p || seen[p]) continue;
    seen[p] = true;
    if (p->kind == PyObject::Kind::Tensor && !p->tensor.defined()) {
      if (!p->storage || !p->storage->data.defined())
        throw pth_error("ihn::io: " + where + ": storage '" +
                        (p->storage ? p->storage->key : std::string("?")) + "' has no data");
      check_view(*p, where);
      p->tensor = p->storage->data.as_strided(p->sizes, p->strides, p->offset);
    }
    for (const auto& i : p->items) todo.push_back(i.get());
    for (const auto& e : p->entries) todo.push_back(e.second.get());
    todo.push_back(p->state.get());
  }
}

inline std::vector<char> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw pth_error("ihn::io: cannot open '" + path + "'");
  return std::vector<char>((std::istreambuf_iterator<char>(f)), {});
}

inline torch::Tensor storage_tensor(const void* bytes, size_t nbytes, const PyStorage& s,
                                    const std::string& where) {
  const size_t need = storage_bytes(s, s.numel, where);
  if (nbytes < need)
    throw pth_error("ihn::io: " + where + ": storage '" + s.key + "' has " +
                    std::to_string(nbytes) + " bytes, needs " + std::to_string(need));
  auto t = torch::empty({s.numel}, torch::TensorOptions().dtype(s.dtype));
  if (need) std::memcpy(t.data_ptr(), bytes, need);
  return t;
}

/// The zip format: data.pkl, then one record data/<key> per storage, each read straight into its
/// tensor (no second copy) once its size is known to fit the declared element count.
inline PyObjectPtr read_zip(const std::shared_ptr<ByteSource>& source) {
  const std::string& where = source->name();
  ZipReader zip(source);
  const std::string pkl = zip.read("data.pkl", kMaxPickleBytes);
  std::map<std::string, std::shared_ptr<PyStorage>> storages;
  Unpickler u(pkl.data(), pkl.size(),
              [&](const PyObjectPtr& pid) { return storage_from_pid(pid, storages); });
  size_t pos = 0;
  PyObjectPtr root;
  try {
    root = u.load(pos);
  } catch (const pth_error& e) {
    throw pth_error(std::string(e.what()) + " (record '" + zip.archive_name() + "/data.pkl' of '" +
                    where + "')");
  }
  for (auto& [key, s] : storages) {
    const ZipEntry& record = zip.entry("data/" + key);
    const size_t need = storage_bytes(*s, s->numel, where);
    if (record.size < need)
      throw pth_error("ihn::io: " + where + ": storage '" + key + "' declares " +
                      std::to_string(s->numel) + " elements (" + std::to_string(need) +
                      " bytes) but its record '" + record.name + "' holds " +
                      std::to_string(record.size) + " bytes");
    // The whole record is read (its CRC covers all of it); the tensor views its first bytes.
    auto bytes = torch::empty({static_cast<int64_t>(record.size)}, torch::kUInt8);
    zip.read_into(record, bytes.data_ptr(), static_cast<size_t>(record.size));
    s->data = bytes.narrow(0, 0, static_cast<int64_t>(need)).view(s->dtype);
  }
  materialise(root, where);
  return root;
}

inline PyObjectPtr read_legacy(const char* data, size_t size, const std::string& where) {
  std::map<std::string, std::shared_ptr<PyStorage>> storages;
  Unpickler u(data, size, [&](const PyObjectPtr& pid) { return storage_from_pid(pid, storages); });
  size_t pos = 0;
  auto magic = u.load(pos);  // 0x1950a86a20f9469cfc6c, pickled as 10 little-endian bytes
  if (magic->kind != PyObject::Kind::Int ||
      magic->text != "\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19")
    throw pth_error("ihn::io: '" + where + "' is not a torch.save file (bad legacy magic number)");
  u.load(pos);  // protocol version
  u.load(pos);  // sys info
  auto root = u.load(pos);
  auto keys = u.load(pos);
  for (const auto& k : keys->items) {
    auto it = storages.find(k->text);
    if (it == storages.end())
      throw pth_error("ihn::io: '" + where + "': unknown storage " + k->text);
    if (size - pos < 8) throw pth_error("ihn::io: '" + where + "': truncated storages");
    int64_t n = 0;
    std::memcpy(&n, data + pos, 8);
    pos += 8;
    auto& s = *it->second;
    const size_t nbytes = storage_bytes(s, n, where);
    if (nbytes > size - pos)
      throw pth_error("ihn::io: '" + where + "': truncated storage " + s.key);
    s.numel = n;
    s.data = storage_tensor(data + pos, nbytes, s, where);
    pos += nbytes;
  }
  materialise(root, where);
  return root;
}

/// Zip or legacy format, told apart by the first bytes.
inline PyObjectPtr read_source(const std::shared_ptr<ByteSource>& source) {
  const std::string& where = source->name();
  unsigned char magic[4] = {0, 0, 0, 0};
  if (source->size() >= 4) source->read(0, magic, 4);
  try {
    if (std::memcmp(magic, "PK\x03\x04", 4) == 0) return read_zip(source);
    if (magic[0] == 0x80) {
      std::vector<char> buf(static_cast<size_t>(source->size()));
      source->read(0, buf.data(), buf.size());
      return read_legacy(buf.data(), buf.size(), where);
    }
  } catch (const pth_error&) {
    throw;
  } catch (const zip_error& e) {  // names the file and the record already
    throw pth_error(std::string("ihn::io: ") + e.what());
  } catch (const std::exception& e) {
    throw pth_error("ihn::io: '" + where + "': " + e.what());
  }
  throw pth_error("ihn::io: '" + where + "' is neither a zip nor a legacy torch.save file");
}

}  // namespace detail

/// The whole object saved with torch.save (zip or legacy format).
inline PyObjectPtr read_pth(const std::string& path) {
  std::shared_ptr<ByteSource> source;
  try {
    source = ByteSource::file(path);
  } catch (const zip_error&) {
    throw pth_error("ihn::io: cannot open '" + path + "'");
  }
  return detail::read_source(source);
}

/// The same from bytes in memory; `name` stands for the file in messages.
inline PyObjectPtr read_pth_bytes(const void* data, size_t size, const std::string& name) {
  return detail::read_source(ByteSource::memory(data, size, name));
}

/// name -> tensor, in the file's order.
using StateDict = std::vector<std::pair<std::string, torch::Tensor>>;

/// The state_dict of a checkpoint: the 'state_dict' (or 'model') entry when present, else the
/// root itself when it is a dict of tensors.
inline StateDict read_state_dict(const std::string& path) {
  auto root = read_pth(path);
  const PyObject* sd = root.get();
  if (root->is_dict()) {
    for (const char* key : {"state_dict", "model", "model_state_dict"}) {
      if (root->contains(key) && root->at(key).is_dict()) {
        sd = &root->at(key);
        break;
      }
    }
  }
  if (!sd->is_dict()) throw pth_error("ihn::io: '" + path + "' holds no state_dict");
  StateDict out;
  for (const auto& [k, v] : sd->entries) {
    if (k->kind != PyObject::Kind::String) continue;
    if (v->kind != PyObject::Kind::Tensor)
      throw pth_error("ihn::io: '" + path + "': state_dict entry '" + k->text +
                      "' is not a tensor");
    out.emplace_back(k->text, v->tensor);
  }
  return out;
}

struct ShapeMismatch {
  std::string key;
  std::vector<int64_t> expected;  ///< in the module
  std::vector<int64_t> found;     ///< in the checkpoint
};

struct LoadReport {
  std::vector<std::string> missing;     ///< in the module, not in the checkpoint
  std::vector<std::string> unexpected;  ///< in the checkpoint, not in the module
  std::vector<ShapeMismatch> mismatched;
  size_t loaded = 0;
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string summary() const {
    std::ostringstream s;
    s << loaded << " tensors loaded";
    auto list = [&s](const char* what, const std::vector<std::string>& keys) {
      if (keys.empty()) return;
      s << "; " << keys.size() << " " << what << ":";
      for (size_t i = 0; i < keys.size() && i < 10; ++i) s << " " << keys[i];
      if (keys.size() > 10) s << " ...";
    };
    list("missing", missing);
    list("unexpected", unexpected);
    for (const auto& m : mismatched)
      s << "; shape mismatch " << m.key << ": module " << c10::IntArrayRef(m.expected)
        << " vs checkpoint " << c10::IntArrayRef(m.found);
    return s.str();
  }
};

struct LoadOptions {
  /// Throw pth_error (naming the keys) unless every key matches by name and shape.
  TORCH_ARG(bool, strict) = true;
  /// Strip this prefix when every checkpoint key has it (nn.DataParallel writes "module.").
  TORCH_ARG(std::string, strip_prefix) = "module.";
};

/// Copies checkpoint tensors into the module's parameters and buffers of the same name
/// (dtype converted, device kept). Strict mode checks everything before copying anything.
inline LoadReport load_state_dict(torch::nn::Module& module, StateDict state,
                                  const LoadOptions& options = {}) {
  if (!options.strip_prefix().empty() && !state.empty()) {
    const auto& p = options.strip_prefix();
    bool all = true;
    for (const auto& e : state) all = all && e.first.compare(0, p.size(), p) == 0;
    if (all)
      for (auto& e : state) e.first = e.first.substr(p.size());
  }
  std::map<std::string, torch::Tensor> targets;
  for (const auto& p : module.named_parameters(true)) targets[p.key()] = p.value();
  for (const auto& b : module.named_buffers(true)) targets[b.key()] = b.value();
  LoadReport report;
  std::map<std::string, bool> seen;
  for (const auto& [key, t] : state) {
    auto it = targets.find(key);
    if (it == targets.end()) {
      report.unexpected.push_back(key);
      continue;
    }
    seen[key] = true;
    if (it->second.sizes() != t.sizes())
      report.mismatched.push_back({key, it->second.sizes().vec(), t.sizes().vec()});
  }
  for (const auto& [key, t] : targets)
    if (!seen.count(key)) report.missing.push_back(key);
  if (options.strict() && !report.ok())
    throw pth_error("ihn::io: state_dict does not match the module: " + report.summary());
  torch::NoGradGuard no_grad;
  std::map<std::string, bool> bad;
  for (const auto& m : report.mismatched) bad[m.key] = true;
  for (const auto& [key, t] : state) {
    auto it = targets.find(key);
    if (it == targets.end() || bad.count(key)) continue;
    it->second.copy_(t);
    ++report.loaded;
  }
  return report;
}

/// read_state_dict + load_state_dict.
inline LoadReport load_pth(torch::nn::Module& module, const std::string& path,
                           const LoadOptions& options = {}) {
  try {
    return load_state_dict(module, read_state_dict(path), options);
  } catch (const pth_error& e) {
    throw pth_error(std::string(e.what()) + " (file '" + path + "')");
  }
}

}  // namespace io
}  // namespace v0
}  // namespace ihn
