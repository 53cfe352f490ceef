// TLS for HTTPS health checks, without a socket: OpenSSL reads and writes two
// memory BIOs, and the caller moves the ciphertext between them and the network
// (on the control thread's io_uring). So a handshake never blocks, never needs a
// thread of its own, and every byte the kernel reads or writes lives in the
// check's slot, not in OpenSSL.
//
// As the NLB, a check does not verify the target's certificate: a self-signed or
// expired one passes. It requires TLS 1.2 or later.
#pragma once

#include <openssl/types.h>

#include <memory>
#include <string>
#include <string_view>

namespace stickyd {

namespace detail {
struct FreeSslCtx {
    void operator()(SSL_CTX* ctx) const;
};
struct FreeSsl {
    void operator()(SSL* ssl) const;
};
}  // namespace detail

// The client settings every check shares; one per control thread.
class TlsContext {
  public:
    // nullptr when OpenSSL cannot make one (out of memory).
    static std::unique_ptr<TlsContext> create();
    SSL_CTX* get() const { return ctx_.get(); }

  private:
    explicit TlsContext(SSL_CTX* ctx) : ctx_(ctx) {}
    std::unique_ptr<SSL_CTX, detail::FreeSslCtx> ctx_;
};

// The SNI to send for `host`: the name itself, or "" for an IP literal (RFC 6066
// section 3 allows only host names there) or no host at all.
std::string sni_for(std::string_view host);

// One client conversation. Freeing it frees its SSL and both BIOs.
class TlsSession {
  public:
    enum class Status {
        done,        // the call did all it was asked
        want_input,  // it needs ciphertext from the peer first: feed() some, call again
        closed,      // the peer ended TLS with close_notify
        failed,      // see error()
    };
    struct Read {
        Status status;
        size_t size = 0;  // plaintext bytes read, when done
    };

    // nullptr when OpenSSL cannot make one (out of memory). `host` is what SNI
    // names (see sni_for).
    static std::unique_ptr<TlsSession> create(const TlsContext& context, std::string_view host);

    // Advances the handshake: done once it has completed (its last flight may
    // still wait in the output).
    Status handshake();
    // Encrypts all of `plaintext` into the output.
    Status write(std::string_view plaintext);
    // Decrypts what has been fed into `out`.
    Read read(char* out, size_t capacity);
    // Ciphertext received from the peer. False only when out of memory.
    bool feed(const char* data, size_t size);

    // Ciphertext to send to the peer, waiting since the last take_output.
    bool has_output() const;
    // Appends it to `out` and forgets it.
    void take_output(std::string& out);

    // Why the last call failed, in OpenSSL's words ("wrong version number").
    const std::string& error() const { return error_; }

  private:
    TlsSession() = default;
    Status status_of(int ret);

    std::unique_ptr<SSL, detail::FreeSsl> ssl_;
    BIO* in_ = nullptr;   // ciphertext from the peer; owned by ssl_
    BIO* out_ = nullptr;  // ciphertext for the peer; owned by ssl_
    std::string error_;
};

}  // namespace stickyd
