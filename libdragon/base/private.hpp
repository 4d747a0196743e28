// SPDX-License-Identifier: MIT
// Included by every internal header: internal headers are not installed and may only be used
// by libdragon itself and its tests, which build with DRAGON_BUILDING_INTERNAL defined.
#pragma once

#ifndef DRAGON_BUILDING_INTERNAL
#error "This is an internal libdragon header; use the public headers in <dragon/...>."
#endif
