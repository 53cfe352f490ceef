#include "stickyd/control_view.hpp"

namespace stickyd {

void CheckDurationHistogram::observe(double seconds) {
    size_t bucket = std::size(kBounds);
    for (size_t i = 0; i < std::size(kBounds); ++i) {
        if (seconds <= kBounds[i]) {
            bucket = i;
            break;
        }
    }
    ++counts[bucket];
    ++total;
    sum_seconds += seconds;
}

const GroupView* ControlView::find(std::string_view group) const {
    for (const GroupView& g : groups)
        if (g.name == group) return &g;
    return nullptr;
}

}  // namespace stickyd
