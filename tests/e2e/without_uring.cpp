// without-uring ERRNO PROGRAM [ARGS...]: runs PROGRAM with io_uring_setup(2)
// failing with ERRNO (a number), the way a container runtime's seccomp profile
// or a sandbox refuses io_uring. For the e2e test of stickyd's message then.
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: without-uring ERRNO PROGRAM [ARGS...]\n");
        return 2;
    }
    const unsigned err = static_cast<unsigned>(std::atoi(argv[1]));
    sock_filter filter[] = {
        // Another architecture's syscall numbers mean other calls: leave them be.
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    sock_fprog program{static_cast<unsigned short>(sizeof filter / sizeof filter[0]), filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &program) != 0) {
        std::fprintf(stderr, "without-uring: cannot install the seccomp filter: %s\n",
                     std::strerror(errno));
        return 2;
    }
    execv(argv[2], argv + 2);
    std::fprintf(stderr, "without-uring: cannot run %s: %s\n", argv[2], std::strerror(errno));
    return 2;
}
