// relay-bench: one-way bulk relay over loopback TCP through io_uring, recv/send
// (what stickyd's workers do) against IORING_OP_SPLICE through a pipe (zero copy,
// but run by io-wq worker threads). A source thread writes, a relay thread on CPU 0
// moves the bytes, a sink thread reads; the relay's CPU is the whole process's
// minus the source's and the sink's own, so io-wq threads count. Rounds alternate
// the variants; medians are printed with their ratio to recv/send.
#include <fcntl.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

void fail(const std::string& what) {
    throw std::runtime_error(what + ": " + std::strerror(errno));
}

void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % static_cast<int>(std::thread::hardware_concurrency()), &set);
    pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

double cpu_seconds(int who) {
    rusage u{};
    getrusage(who, &u);
    auto s = [](timeval t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
    return s(u.ru_utime) + s(u.ru_stime);
}

int listener(uint16_t& port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || listen(fd, 4) != 0)
        fail("listener");
    socklen_t len = sizeof a;
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    return fd;
}

int connect_to(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) fail("connect");
    return fd;
}

// One completion for the single SQE just prepared.
int run(io_uring& ring) {
    io_uring_submit(&ring);
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) != 0) fail("io_uring_wait_cqe");
    const int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    return res;
}

void relay_recv_send(io_uring& ring, int in, int out, size_t buffer) {
    std::vector<char> buf(buffer);
    for (;;) {
        io_uring_prep_recv(io_uring_get_sqe(&ring), in, buf.data(), buf.size(), 0);
        const int n = run(ring);
        if (n < 0) throw std::runtime_error(std::string("recv: ") + std::strerror(-n));
        if (n == 0) return;
        for (int sent = 0; sent < n;) {
            io_uring_prep_send(io_uring_get_sqe(&ring), out, buf.data() + sent, n - sent,
                               MSG_NOSIGNAL);
            const int m = run(ring);
            if (m <= 0) throw std::runtime_error(std::string("send: ") + std::strerror(-m));
            sent += m;
        }
    }
}

void relay_splice(io_uring& ring, int in, int out, size_t pipe_size) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) fail("pipe2");
    fcntl(p[1], F_SETPIPE_SZ, static_cast<int>(pipe_size));
    for (;;) {
        io_uring_prep_splice(io_uring_get_sqe(&ring), in, -1, p[1], -1,
                             static_cast<unsigned>(pipe_size), SPLICE_F_MOVE);
        const int n = run(ring);
        if (n < 0) throw std::runtime_error(std::string("splice in: ") + std::strerror(-n));
        if (n == 0) break;
        for (int moved = 0; moved < n;) {
            io_uring_prep_splice(io_uring_get_sqe(&ring), p[0], -1, out, -1,
                                 static_cast<unsigned>(n - moved), SPLICE_F_MOVE);
            const int m = run(ring);
            if (m <= 0) throw std::runtime_error(std::string("splice out: ") + std::strerror(-m));
            moved += m;
        }
    }
    close(p[0]);
    close(p[1]);
}

struct Round {
    double seconds = 0;
    double relay_cpu = 0;  // seconds
};

// Moves `bytes` source -> relay -> sink once with the given variant.
Round one_round(const std::string& variant, uint64_t bytes) {
    uint16_t in_port = 0, out_port = 0;
    const int in_listener = listener(in_port);
    const int out_listener = listener(out_port);
    double source_cpu = 0, sink_cpu = 0;
    uint64_t received = 0;

    std::thread source([&] {
        pin(1);
        const int fd = connect_to(in_port);
        std::vector<char> chunk(1 << 20, 'x');
        for (uint64_t left = bytes; left > 0;) {
            const ssize_t n = send(fd, chunk.data(), std::min<uint64_t>(left, chunk.size()), 0);
            if (n <= 0) break;
            left -= static_cast<uint64_t>(n);
        }
        close(fd);
        source_cpu = cpu_seconds(RUSAGE_THREAD);
    });
    std::thread sink([&] {
        pin(1);
        const int fd = accept4(out_listener, nullptr, nullptr, SOCK_CLOEXEC);
        std::vector<char> chunk(1 << 20);
        for (;;) {
            const ssize_t n = recv(fd, chunk.data(), chunk.size(), 0);
            if (n <= 0) break;
            received += static_cast<uint64_t>(n);
        }
        close(fd);
        sink_cpu = cpu_seconds(RUSAGE_THREAD);
    });

    const double cpu_before = cpu_seconds(RUSAGE_SELF);
    const auto start = Clock::now();
    std::string error;
    std::thread relay([&] {
        pin(0);
        try {
            const int in = accept4(in_listener, nullptr, nullptr, SOCK_CLOEXEC);
            const int out = connect_to(out_port);
            int one = 1;
            setsockopt(out, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            io_uring ring{};
            if (io_uring_queue_init(8, &ring, 0) != 0) fail("io_uring_queue_init");
            if (variant == "recv/send")
                relay_recv_send(ring, in, out, 32 * 1024);
            else if (variant == "splice 64K")
                relay_splice(ring, in, out, 64 * 1024);
            else
                relay_splice(ring, in, out, 1024 * 1024);
            io_uring_queue_exit(&ring);
            shutdown(out, SHUT_WR);
            close(in);
            close(out);
        } catch (const std::exception& e) {
            error = e.what();
        }
    });
    relay.join();
    source.join();
    sink.join();
    Round r;
    r.seconds = std::chrono::duration<double>(Clock::now() - start).count();
    // Thread CPU of source and sink counted from their start; the process delta
    // includes them, the relay and its io-wq workers.
    r.relay_cpu = cpu_seconds(RUSAGE_SELF) - cpu_before - source_cpu - sink_cpu;
    close(in_listener);
    close(out_listener);
    if (!error.empty()) throw std::runtime_error(variant + ": " + error);
    if (received != bytes) {
        throw std::runtime_error(variant + ": the sink got " + std::to_string(received) + " of " +
                                 std::to_string(bytes) + " bytes");
    }
    return r;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"One-way loopback relay through io_uring: recv/send against splice"};
    unsigned rounds = 5;
    double gib = 1.0;
    app.add_option("--rounds", rounds, "rounds per variant (alternating)")
        ->check(CLI::PositiveNumber);
    app.add_option("--gib", gib, "GiB moved per round")->check(CLI::PositiveNumber);
    CLI11_PARSE(app, argc, argv);
    const auto bytes = static_cast<uint64_t>(gib * (1ULL << 30));
    const std::vector<std::string> variants = {"recv/send", "splice 64K", "splice 1M"};
    std::vector<std::vector<double>> gbps(variants.size()), cpu(variants.size());
    try {
        for (unsigned r = 0; r < rounds; ++r) {
            for (size_t v = 0; v < variants.size(); ++v) {
                const Round result = one_round(variants[v], bytes);
                gbps[v].push_back(bytes * 8 / result.seconds / 1e9);
                cpu[v].push_back(result.relay_cpu * 1000 / gib);
            }
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "relay-bench: %s\n", e.what());
        return 1;
    }
    std::printf(
        "%u rounds of %.1f GiB per variant, medians; relay on CPU 0, source and sink on CPU 1\n\n",
        rounds, gib);
    std::printf("%-12s %10s %16s %12s %12s\n", "variant", "Gbit/s", "relay CPU ms/GiB",
                "Gbit/s ratio", "CPU ratio");
    const double base_gbps = median(gbps[0]), base_cpu = median(cpu[0]);
    for (size_t v = 0; v < variants.size(); ++v) {
        std::printf("%-12s %10.2f %16.0f %11.2fx %11.2fx\n", variants[v].c_str(), median(gbps[v]),
                    median(cpu[v]), median(gbps[v]) / base_gbps, median(cpu[v]) / base_cpu);
    }
    return 0;
}
