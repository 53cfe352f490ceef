#include "stickyctl/compare.hpp"

#include <doctest/doctest.h>

#include "stickyd/fingerprint.hpp"

using namespace stickyd;

namespace {

TargetConfig target(const char* id, const char* address, uint32_t weight = 1) {
    auto parsed = SocketAddress::parse(address);
    REQUIRE(parsed.has_value());
    return {id, *parsed, weight};
}

// The /status document of an instance running one group "web" with `targets`.
Json status_of(std::vector<TargetConfig> targets) {
    TargetGroupConfig g;
    g.name = "web";
    g.targets = std::move(targets);
    const RoutingInputs inputs = routing_inputs(g);
    Json list = Json::array();
    for (const auto& t : inputs.targets) {
        list.push_back({{"id", t.id}, {"address", t.address}, {"weight", t.weight}});
    }
    Json routing{{"fingerprint", routing_fingerprint(inputs)},
                 {"usable_fingerprint", "0000000000000000"},
                 {"mapping_version", kMappingVersion},
                 {"algorithm", "ring"},
                 {"table_size", nullptr},
                 {"prefix_v4", 32},
                 {"prefix_v6", 128},
                 {"targets", std::move(list)}};
    return Json{{"groups", Json::array({Json{{"name", "web"}, {"routing", std::move(routing)}}})}};
}

std::vector<TargetConfig> abc() {
    return {target("a", "10.0.0.1:80"), target("b", "10.0.0.2:80"), target("c", "10.0.0.3:80")};
}

}  // namespace

TEST_CASE("instances with the same targets agree") {
    auto reversed = abc();
    std::swap(reversed[0], reversed[2]);
    const Json doc = compare_document({{"A", status_of(abc())}, {"B", status_of(reversed)}}, "");
    CHECK(doc["agree"] == true);
    CHECK(doc["groups"][0]["differences"].empty());
}

TEST_CASE("another weight and another address are named, with the share that differs") {
    auto other = abc();
    other[1].weight = 2;
    other[2].address = *SocketAddress::parse("10.0.0.33:80");
    const Json doc = compare_document({{"A", status_of(abc())}, {"B", status_of(other)}}, "");
    CHECK(doc["agree"] == false);
    const Json& d = doc["groups"][0]["differences"][0];
    CHECK(d["admin"] == "B");
    CHECK(d["weight"] == Json::array({Json{{"id", "b"}, {"reference", 1}, {"here", 2}}}));
    CHECK(d["address"] ==
          Json::array({Json{{"id", "c"}, {"reference", "10.0.0.3:80"}, {"here", "10.0.0.33:80"}}}));
    CHECK(d["problem"].is_null());
    CHECK(d["differs"].get<double>() > 0.3);  // c's whole share, and what b gained
}

TEST_CASE("a group missing on one instance, another mapping version, a forged fingerprint") {
    Json missing = status_of(abc());
    missing["groups"][0]["routing"] = nullptr;
    Json doc = compare_document({{"A", status_of(abc())}, {"B", missing}}, "");
    CHECK(doc["agree"] == false);
    CHECK(doc["groups"][0]["differences"][0]["problem"] ==
          "the group is missing or has no routing table here");

    Json newer = status_of(abc());
    newer["groups"][0]["routing"]["mapping_version"] = kMappingVersion + 1;
    newer["groups"][0]["routing"]["fingerprint"] = "ffffffffffffffff";
    doc = compare_document({{"A", status_of(abc())}, {"B", newer}}, "");
    const std::string problem = doc["groups"][0]["differences"][0]["problem"];
    CHECK(problem.starts_with("mapping version 1 against 2"));
    CHECK(doc["groups"][0]["differences"][0]["differs"].is_null());

    Json forged = status_of(abc());
    forged["groups"][0]["routing"]["fingerprint"] = "ffffffffffffffff";
    doc = compare_document({{"A", status_of(abc())}, {"B", forged}}, "");
    CHECK(doc["groups"][0]["differences"][0]["problem"] ==
          "a fingerprint does not match its own targets: another stickyd version?");
}

TEST_CASE("--group limits the comparison to one group, present or not") {
    const Json doc = compare_document({{"A", status_of(abc())}, {"B", status_of(abc())}}, "nope");
    REQUIRE(doc["groups"].size() == 1);
    CHECK(doc["groups"][0]["name"] == "nope");
    CHECK(doc["agree"] == false);
}
