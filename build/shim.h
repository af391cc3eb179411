// What lincal's C++ shims over libtorch share. An exception must not unwind into Rust, so
// every entry point runs its body through lincal_shim_try, which returns 0, or 1 with the
// exception's text written into the caller's buffer.
#pragma once

#include <cstdio>
#include <exception>

inline void lincal_write_error(char* error, size_t capacity, const char* text) {
  std::snprintf(error, capacity, "%s", text);
}

template <typename Body>
int lincal_shim_try(char* error, size_t capacity, Body body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    lincal_write_error(error, capacity, e.what());
  } catch (...) {
    lincal_write_error(error, capacity, "an exception that is not a std::exception");
  }
  return 1;
}
