// The control thread's io_uring ops, tagged with the one user_data layout
// (datapath/user_data.hpp) that the workers use too.
#pragma once

#include <cstdint>

#include "datapath/user_data.hpp"

namespace stickyd {

enum class ControlOp : uint8_t {
    ignore = 0,     // cancel and timeout-remove results: nothing to do
    wake,           // eventfd read: commands queued, stop, or passive failures to look at
    tick,           // the timer for the next scheduled check or deregistration deadline
    check_connect,  // connect to the checked target; slot = the check slot
    check_send,     // send the PROXY header, TLS records and/or the HTTP request
    check_recv,     // recv TLS records or the response (or drain it before closing)
    check_timeout,  // the check's deadline
};

using ControlTag = Tagged<ControlOp>;

}  // namespace stickyd
