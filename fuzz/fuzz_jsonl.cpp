// libFuzzer target: the JSONL report reader of ihn eval (ihn::eval::read_reports_jsonl). Its only
// error is EvalError "<file>:<line>: <what>".
#include <ihn/eval/jsonl.hpp>

#include <cstdint>
#include <sstream>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    const auto reports = ihn::eval::read_reports_jsonl(in, "input.jsonl");
    (void)ihn::eval::match_by_id(reports, reports);
  } catch (const ihn::eval::EvalError&) {
  }
  return 0;
}
