// syscall-filter ALLOWED_SYSCALLS_FILE FAMILIES PROGRAM [ARGS...]: runs PROGRAM under
// the seccomp filter systemd builds for a unit with
//     SystemCallFilter=<the syscalls listed in the file, one per line>
//     SystemCallErrorNumber=EPERM
//     RestrictAddressFamilies=<FAMILIES, comma-separated: AF_INET,AF_INET6,AF_UNIX>
//     NoNewPrivileges=yes
// so that e2e tests can run stickyd inside its unit's sandbox without a systemd to
// start it: a syscall off the list fails with EPERM, and socket() for any other
// address family fails with EAFNOSUPPORT, as under systemd.
#include <seccomp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>

namespace {

const std::map<std::string, int> kFamilies = {
    {"AF_UNIX", AF_UNIX},       {"AF_INET", AF_INET},     {"AF_INET6", AF_INET6},
    {"AF_NETLINK", AF_NETLINK}, {"AF_PACKET", AF_PACKET},
};

// SCMP_A0 leaves datum_b to the aggregate's default, which clang's
// -Wmissing-field-initializers refuses.
scmp_arg_cmp first_argument(scmp_compare op, int value) {
    return scmp_arg_cmp{0, op, static_cast<scmp_datum_t>(value), 0};
}

int fail(const std::string& what) {
    std::fprintf(stderr, "syscall-filter: %s\n", what.c_str());
    return 2;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) {
        return fail("usage: syscall-filter ALLOWED_SYSCALLS_FILE FAMILIES PROGRAM [ARGS...]");
    }
    std::ifstream list(argv[1]);
    if (!list) return fail(std::string("cannot read ") + argv[1]);
    std::set<int> families;
    std::stringstream family_text(argv[2]);
    for (std::string name; std::getline(family_text, name, ',');) {
        auto it = kFamilies.find(name);
        if (it == kFamilies.end()) return fail("unknown address family " + name);
        families.insert(it->second);
    }

    // Default: EPERM, systemd's SystemCallErrorNumber= here. A foreign architecture's
    // calls are killed, as SystemCallArchitectures=native does.
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
    if (ctx == nullptr) return fail("seccomp_init failed");
    const int socket_nr = seccomp_syscall_resolve_name("socket");
    bool socket_allowed = false;
    for (std::string name; std::getline(list, name);) {
        if (name.empty()) continue;
        const int nr = seccomp_syscall_resolve_name(name.c_str());
        if (nr == __NR_SCMP_ERROR) continue;  // not a syscall on this architecture
        if (nr == socket_nr) {
            socket_allowed = true;  // by family, below
            continue;
        }
        // Negative numbers are other architectures' pseudo-syscalls (socketcall
        // multiplexed calls on x86-32): nothing to add natively.
        if (nr < 0) continue;
        if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0); rc < 0) {
            return fail("cannot allow " + name + ": " + std::strerror(-rc));
        }
    }
    if (socket_allowed) {
        // RestrictAddressFamilies=: the families listed work, the others fail as if
        // the kernel had none of them.
        constexpr int kFamilyLimit = AF_MAX;
        for (int family = 0; family < kFamilyLimit; ++family) {
            const uint32_t action =
                families.count(family) ? SCMP_ACT_ALLOW : SCMP_ACT_ERRNO(EAFNOSUPPORT);
            if (int rc = seccomp_rule_add(ctx, action, socket_nr, 1,
                                          first_argument(SCMP_CMP_EQ, family));
                rc < 0) {
                return fail(std::string("cannot add a socket() rule: ") + std::strerror(-rc));
            }
        }
        if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EAFNOSUPPORT), socket_nr, 1,
                                      first_argument(SCMP_CMP_GE, kFamilyLimit));
            rc < 0) {
            return fail(std::string("cannot add a socket() rule: ") + std::strerror(-rc));
        }
    }
    if (int rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 1); rc < 0) {
        return fail(std::string("cannot set no_new_privs: ") + std::strerror(-rc));
    }
    if (int rc = seccomp_load(ctx); rc < 0) {
        return fail(std::string("cannot load the filter: ") + std::strerror(-rc));
    }
    seccomp_release(ctx);
    execv(argv[3], argv + 3);
    return fail(std::string("cannot run ") + argv[3] + ": " + std::strerror(errno));
}
