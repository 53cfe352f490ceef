// HTTPS health checks: the TLS session against an OpenSSL server through memory
// (no sockets), then the health checker's I/O over loopback against TLS, plain and
// silent servers this file starts, each with a self-signed certificate it makes.
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "control/health_checker.hpp"
#include "control/tls_session.hpp"
#include "stickyd/proxy_protocol.hpp"

using namespace stickyd;
using namespace std::chrono_literals;

namespace {

// A server context with a fresh self-signed certificate for CN=localhost (P-256:
// generated in a millisecond, unlike RSA).
struct ServerContext {
    SSL_CTX* ctx = nullptr;

    ServerContext() {
        EVP_PKEY* key = EVP_EC_gen("P-256");
        REQUIRE(key != nullptr);
        X509* cert = X509_new();
        ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
        X509_gmtime_adj(X509_getm_notBefore(cert), 0);
        X509_gmtime_adj(X509_getm_notAfter(cert), 24 * 3600);
        X509_set_pubkey(cert, key);
        X509_NAME* name = X509_get_subject_name(cert);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                                   reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
        X509_set_issuer_name(cert, name);
        REQUIRE(X509_sign(cert, key, EVP_sha256()) > 0);
        ctx = SSL_CTX_new(TLS_server_method());
        REQUIRE(ctx != nullptr);
        REQUIRE(SSL_CTX_use_certificate(ctx, cert) == 1);
        REQUIRE(SSL_CTX_use_PrivateKey(ctx, key) == 1);
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    ~ServerContext() { SSL_CTX_free(ctx); }
    ServerContext(const ServerContext&) = delete;
    ServerContext& operator=(const ServerContext&) = delete;
};

// ---------------------------------------------------------------------------
// Through memory: the client session and an OpenSSL server, bytes moved by hand.

struct MemoryServer {
    SSL* ssl;
    BIO* in = BIO_new(BIO_s_mem());
    BIO* out = BIO_new(BIO_s_mem());

    explicit MemoryServer(const ServerContext& context) : ssl(SSL_new(context.ctx)) {
        SSL_set_bio(ssl, in, out);
        SSL_set_accept_state(ssl);
    }
    ~MemoryServer() { SSL_free(ssl); }
    MemoryServer(const MemoryServer&) = delete;
    MemoryServer& operator=(const MemoryServer&) = delete;

    std::string take() {
        std::string bytes(BIO_ctrl_pending(out), '\0');
        if (!bytes.empty()) BIO_read(out, bytes.data(), static_cast<int>(bytes.size()));
        return bytes;
    }
    void give(const std::string& bytes) {
        if (!bytes.empty()) BIO_write(in, bytes.data(), static_cast<int>(bytes.size()));
    }
};

// Moves flights both ways until the client's handshake ends (or stops moving).
TlsSession::Status handshake(TlsSession& client, MemoryServer& server) {
    TlsSession::Status status = TlsSession::Status::want_input;
    for (int flight = 0; flight < 10; ++flight) {
        status = client.handshake();
        std::string bytes;
        client.take_output(bytes);
        server.give(bytes);
        SSL_do_handshake(server.ssl);
        const std::string reply = server.take();
        if (status != TlsSession::Status::want_input && reply.empty()) return status;
        REQUIRE(client.feed(reply.data(), reply.size()));
    }
    return status;
}

TEST_CASE("tls session: SNI names host names only") {
    CHECK(sni_for("localhost") == "localhost");
    CHECK(sni_for("api.example.com") == "api.example.com");
    CHECK(sni_for("127.0.0.1") == "");  // RFC 6066: no IP literals in server_name
    CHECK(sni_for("::1") == "");
    CHECK(sni_for("::ffff:10.0.0.1") == "");
    CHECK(sni_for("") == "");
}

TEST_CASE("tls session: the shared context asks for TLS 1.2 or later") {
    auto context = TlsContext::create();
    REQUIRE(context);
    CHECK(SSL_CTX_get_min_proto_version(context->get()) == TLS1_2_VERSION);
    CHECK(SSL_CTX_get_verify_mode(context->get()) == SSL_VERIFY_NONE);
}

TEST_CASE("tls session: handshake, request, response and close_notify through memory") {
    ServerContext server_context;
    auto context = TlsContext::create();
    REQUIRE(context);
    for (const char* host : {"localhost", "127.0.0.1"}) {
        CAPTURE(host);
        auto client = TlsSession::create(*context, host);
        REQUIRE(client);
        MemoryServer server(server_context);
        // The self-signed certificate is accepted: checks do not verify.
        REQUIRE(handshake(*client, server) == TlsSession::Status::done);
        REQUIRE(SSL_is_init_finished(server.ssl));
        const char* sni = SSL_get_servername(server.ssl, TLSEXT_NAMETYPE_host_name);
        if (std::string(host) == "localhost") {
            REQUIRE(sni != nullptr);
            CHECK(std::string(sni) == "localhost");
        } else {
            CHECK(sni == nullptr);
        }
        CHECK(SSL_version(server.ssl) >= TLS1_2_VERSION);

        const std::string request = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        REQUIRE(client->write(request) == TlsSession::Status::done);
        std::string bytes;
        client->take_output(bytes);
        CHECK_FALSE(client->has_output());
        CHECK(bytes.find("GET") == std::string::npos);  // encrypted
        server.give(bytes);
        char got[256];
        const int n = SSL_read(server.ssl, got, sizeof got);
        REQUIRE(n > 0);
        CHECK(std::string(got, static_cast<size_t>(n)) == request);

        const std::string response = "HTTP/1.1 204 No Content\r\n\r\n";
        REQUIRE(SSL_write(server.ssl, response.data(), static_cast<int>(response.size())) > 0);
        SSL_shutdown(server.ssl);
        bytes = server.take();
        REQUIRE(client->feed(bytes.data(), bytes.size()));
        std::string plain;
        TlsSession::Read read{TlsSession::Status::done};
        while ((read = client->read(got, sizeof got)).status == TlsSession::Status::done) {
            plain.append(got, read.size);
        }
        CHECK(plain == response);
        CHECK(read.status == TlsSession::Status::closed);
    }
}

TEST_CASE("tls session: a peer that does not speak TLS fails the handshake, saying so") {
    auto context = TlsContext::create();
    REQUIRE(context);
    auto client = TlsSession::create(*context, "127.0.0.1");
    REQUIRE(client);
    REQUIRE(client->handshake() == TlsSession::Status::want_input);
    REQUIRE(client->has_output());  // the ClientHello
    const std::string reply = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n";
    REQUIRE(client->feed(reply.data(), reply.size()));
    CHECK(client->handshake() == TlsSession::Status::failed);
    CHECK(client->error() == "wrong version number");
    // A second session on the same thread starts with a clean error queue.
    auto next = TlsSession::create(*context, "127.0.0.1");
    REQUIRE(next);
    CHECK(next->handshake() == TlsSession::Status::want_input);
}

// ---------------------------------------------------------------------------
// Through the health checker: real sockets on loopback, the checker's io_uring.

struct Listener {
    int fd = -1;
    SocketAddress address;

    Listener() {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin) == 0);
        REQUIRE(::listen(fd, 16) == 0);
        socklen_t len = sizeof sin;
        REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len) == 0);
        address = SocketAddress::from_sockaddr(reinterpret_cast<sockaddr*>(&sin), len);
    }
    ~Listener() { ::close(fd); }
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    // Unblocks a thread waiting in accept.
    void shut() const { ::shutdown(fd, SHUT_RDWR); }
};

// One connection served on a thread, blocking: the test thread runs the checker.
class Server {
  public:
    enum class Mode {
        tls,          // TLS, then answer `response` to the request
        plain,        // no TLS: answer the ClientHello as a plain HTTP server would
        close_early,  // read the ClientHello, then close
        hold,         // read the ClientHello, then wait for the client to go away
    };

    Server(Mode mode, SSL_CTX* ctx = nullptr, std::string response = {}, bool proxy_header = false)
        : thread_([=, this] { serve(mode, ctx, response, proxy_header); }) {}
    ~Server() {
        listener_.shut();
        thread_.join();
    }
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    const SocketAddress& address() const { return listener_.address; }
    bool got_hello() const { return got_hello_; }
    std::string request() {
        std::lock_guard lock(mutex_);
        return request_;
    }
    std::optional<std::string> sni() {
        std::lock_guard lock(mutex_);
        return sni_;
    }
    std::string proxy_header() {
        std::lock_guard lock(mutex_);
        return proxy_header_;
    }

  private:
    void serve(Mode mode, SSL_CTX* ctx, const std::string& response, bool proxy_header) {
        const int fd = ::accept4(listener_.fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd < 0) return;
        if (proxy_header) {
            char header[16];
            if (::recv(fd, header, sizeof header, MSG_WAITALL) == sizeof header) {
                std::lock_guard lock(mutex_);
                proxy_header_.assign(header, sizeof header);
            }
        }
        if (mode == Mode::tls) {
            serve_tls(fd, ctx, response);
        } else {
            char hello[4096];
            got_hello_ = ::recv(fd, hello, sizeof hello, 0) > 0;
            if (mode == Mode::plain) {
                const std::string answer = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n";
                (void)!::send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
            } else if (mode == Mode::hold) {
                while (::recv(fd, hello, sizeof hello, 0) > 0) {
                }
            }
        }
        ::close(fd);
    }

    void serve_tls(int fd, SSL_CTX* ctx, const std::string& response) {
        SSL* ssl = SSL_new(ctx);
        SSL_set_fd(ssl, fd);
        if (SSL_accept(ssl) == 1) {
            got_hello_ = true;
            const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
            std::string request;
            char buffer[1024];
            int n = 0;
            while (request.find("\r\n\r\n") == std::string::npos &&
                   (n = SSL_read(ssl, buffer, sizeof buffer)) > 0) {
                request.append(buffer, static_cast<size_t>(n));
            }
            {
                std::lock_guard lock(mutex_);
                request_ = request;
                if (name != nullptr) sni_ = name;
            }
            SSL_write(ssl, response.data(), static_cast<int>(response.size()));
            SSL_shutdown(ssl);
        }
        SSL_free(ssl);
    }

    Listener listener_;
    std::atomic<bool> got_hello_{false};
    std::mutex mutex_;
    std::string request_;
    std::optional<std::string> sni_;
    std::string proxy_header_;
    std::thread thread_;  // last: starts once everything it uses exists
};

// A HealthChecker on a ring of its own, driven from the test thread as the
// control loop drives it.
struct Driver {
    struct Verdict {
        bool passed = false;
        std::string reason;
    };
    Uring ring{64, 256};
    std::optional<Verdict> verdict;
    bool quiet = false;
    HealthChecker checker{ring,
                          [this](uint32_t, bool passed, const std::string& reason,
                                 std::chrono::steady_clock::duration) {
                              verdict = Verdict{passed, reason};
                          },
                          [this](uint32_t) { quiet = true; }};

    Driver() { ring.enable(); }

    // Turns the loop until `done`; false if that takes absurdly long (a hung
    // check fails the test instead of hanging it).
    template <typename Done>
    bool run_until(Done done) {
        const auto limit = std::chrono::steady_clock::now() + 30s;
        while (!done()) {
            if (std::chrono::steady_clock::now() > limit) return false;
            ring.submit_and_wait(1, to_timespec(100ms));
            ring.for_each_completion([this](const io_uring_cqe& cqe) {
                const ControlTag tag = decode<ControlOp>(cqe.user_data);
                if (tag.op != ControlOp::ignore) checker.on_completion(tag, cqe.res);
            });
        }
        return true;
    }

    Verdict check(const SocketAddress& address, std::chrono::milliseconds timeout = 10s,
                  bool proxy_protocol_v2 = false) {
        REQUIRE(checker.start(0, request(address, timeout, proxy_protocol_v2)));
        REQUIRE(run_until([this] { return quiet; }));
        REQUIRE(verdict.has_value());
        CHECK(checker.in_flight() == 0);
        return *verdict;
    }

    static CheckRequest request(const SocketAddress& address, std::chrono::milliseconds timeout,
                                bool proxy_protocol_v2 = false) {
        CheckRequest r;
        r.address = address;
        r.protocol = HealthProtocol::https;
        r.path = "/health";
        r.proxy_protocol_v2 = proxy_protocol_v2;
        r.matcher = std::get<Matcher>(parse_matcher("200-399"));
        r.timeout = timeout;
        return r;
    }
};

TEST_CASE("https check: passes on a matching status, over TLS, without SNI for an IP") {
    ServerContext tls;
    Server server(Server::Mode::tls, tls.ctx, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    Driver driver;
    const auto verdict = driver.check(server.address());
    CHECK(verdict.passed);
    CHECK(verdict.reason == "HTTP 200");
    const std::string request = server.request();
    CHECK(request.starts_with("GET /health HTTP/1.1\r\n"));
    CHECK(request.find("Host: " + server.address().to_string() + "\r\n") != std::string::npos);
    CHECK_FALSE(server.sni().has_value());
}

TEST_CASE("https check: a status the matcher refuses fails with the status") {
    ServerContext tls;
    Server server(Server::Mode::tls, tls.ctx, "HTTP/1.1 503 Unavailable\r\n\r\n");
    Driver driver;
    const auto verdict = driver.check(server.address());
    CHECK_FALSE(verdict.passed);
    CHECK(verdict.reason == "HTTP 503 (matcher 200-399)");
}

TEST_CASE("https check: the PROXY LOCAL header goes first, in the clear") {
    ServerContext tls;
    Server server(Server::Mode::tls, tls.ctx, "HTTP/1.1 200 OK\r\n\r\n", true);
    Driver driver;
    const auto verdict = driver.check(server.address(), 10s, true);
    CHECK(verdict.passed);
    const auto local = proxy::encode_v2_local();
    CHECK(server.proxy_header() ==
          std::string(reinterpret_cast<const char*>(local.view().data()), local.view().size()));
}

TEST_CASE("https check: a plain TCP server fails the handshake") {
    Server server(Server::Mode::plain);
    Driver driver;
    const auto verdict = driver.check(server.address());
    CHECK_FALSE(verdict.passed);
    CHECK(verdict.reason == "TLS handshake failed: wrong version number");
}

TEST_CASE("https check: a close during the handshake fails it") {
    Server server(Server::Mode::close_early);
    Driver driver;
    const auto verdict = driver.check(server.address());
    CHECK_FALSE(verdict.passed);
    CHECK(verdict.reason.starts_with("TLS handshake failed: "));
    // A FIN, or a reset if the kernel had the ClientHello's tail unread.
    const bool closed = verdict.reason == "TLS handshake failed: connection closed" ||
                        verdict.reason == "TLS handshake failed: connection reset by peer";
    CHECK_MESSAGE(closed, verdict.reason);
}

TEST_CASE("https check: a target that never answers the ClientHello times out in the handshake") {
    Listener silent;  // the kernel accepts; nobody reads
    Driver driver;
    const auto verdict = driver.check(silent.address, 200ms);
    CHECK_FALSE(verdict.passed);
    CHECK(verdict.reason == "timed out after 200 ms (TLS handshake)");
}

TEST_CASE("https check: abandoned or stopped mid-handshake, it ends quietly with no verdict") {
    for (const bool stop : {false, true}) {
        CAPTURE(stop);
        Server server(Server::Mode::hold);
        Driver driver;
        REQUIRE(driver.checker.start(0, Driver::request(server.address(), 60s)));
        REQUIRE(driver.run_until([&] { return server.got_hello(); }));
        if (stop) {
            // As the control loop stops: no more verdicts, everything cancelled.
            driver.checker.stop();
            io_uring_prep_cancel64(driver.ring.sqe(encode(ControlOp::ignore)), 0,
                                   IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        } else {
            driver.checker.abandon(0);
        }
        REQUIRE(driver.run_until([&] { return driver.quiet; }));
        CHECK_FALSE(driver.verdict.has_value());
        CHECK(driver.checker.in_flight() == 0);
        CHECK_FALSE(driver.checker.busy(0));
    }
}

TEST_CASE("https check: a slot runs check after check, each with a session of its own") {
    ServerContext tls;
    Driver driver;
    for (int i = 0; i < 3; ++i) {
        Server server(Server::Mode::tls, tls.ctx, "HTTP/1.0 200 ok\r\n\r\n");
        driver.verdict.reset();
        driver.quiet = false;
        const auto verdict = driver.check(server.address());
        CHECK(verdict.passed);
    }
    Server plain(Server::Mode::plain);
    driver.verdict.reset();
    driver.quiet = false;
    CHECK(driver.check(plain.address()).reason == "TLS handshake failed: wrong version number");
}

}  // namespace
