// SPDX-License-Identifier: MIT
// Result<T>: a value or a non-OK Status, spelled like std::expected.
#pragma once

#include <dragon/status.hpp>

#include <cstdlib>
#include <type_traits>
#include <utility>
#include <variant>

namespace dragon {

template <typename T>
class [[nodiscard]] Result {
  static_assert(!std::is_same_v<T, Status>, "use Status directly");

 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::in_place_index<1>, std::move(status)) {  // NOLINT
    if (std::get<1>(v_).isOk()) {
      // An OK status without a value is a bug in the caller.
      std::get<1>(v_) = Status(StatusCode::Internal, "Result built from an OK status");
    }
  }
  Result(StatusCode code) : Result(Status(code)) {}  // NOLINT

  bool has_value() const noexcept { return v_.index() == 0; }  // NOLINT: std::expected spelling
  explicit operator bool() const noexcept { return has_value(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  const Status& error() const& { return std::get<1>(v_); }
  Status&& error() && { return std::get<1>(std::move(v_)); }
  // The status: OK when there is a value.
  Status status() const { return has_value() ? Status() : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace dragon

#define DRAGON_CONCAT_INNER_(a, b) a##b
#define DRAGON_CONCAT_(a, b) DRAGON_CONCAT_INNER_(a, b)

// Returns the Status from the enclosing function when `expr` is not OK.
#define DRAGON_TRY(expr)                      \
  do {                                        \
    ::dragon::Status dragon_try_st_ = (expr); \
    if (!dragon_try_st_.isOk()) {             \
      return dragon_try_st_;                  \
    }                                         \
  } while (0)

#define DRAGON_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.has_value()) {                             \
    return std::move(tmp).error();                    \
  }                                                   \
  lhs = std::move(tmp).value()

// `DRAGON_ASSIGN_OR_RETURN(auto x, makeX());` declares x from a Result or returns its error.
#define DRAGON_ASSIGN_OR_RETURN(lhs, expr) \
  DRAGON_ASSIGN_OR_RETURN_IMPL_(DRAGON_CONCAT_(dragon_res_, __LINE__), lhs, expr)
