/*
 * Peer for bench/peers.sh: uWebSockets (v20, C++, on uSockets' epoll loop,
 * no TLS, no compression) as
 *   /echo    every message sent back to its sender;
 *   /fanout  a pub/sub room: every connection subscribes to one topic when
 *            it opens, and every message received is published to that
 *            topic by the app, so the library writes it to every
 *            subscriber, the sender included (its corked, batched path).
 * The library drops messages for a subscriber only past maxBackpressure
 * bytes queued for it (and never closes it for that): 64 MiB, far beyond
 * the few kilobytes chatd-bench's window lets pile up, since it counts
 * every delivery.
 *
 * Not built from anything in this tree: bench/peers.sh compiles it against a
 * uWebSockets source tree given as UWS_SRC (see bench/README.md).
 *
 * usage: uws-peer PORT
 */
#include "App.h"

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace {

/* No per-connection state: the library's own is all the peer needs. */
struct PerSocket {};

constexpr std::string_view ROOM = "room";

uWS::App::WebSocketBehavior<PerSocket> behavior()
{
    uWS::App::WebSocketBehavior<PerSocket> b;
    b.compression = uWS::DISABLED;
    b.maxPayloadLength = 64 * 1024;
    b.idleTimeout = 120;
    b.maxBackpressure = 64 * 1024 * 1024;
    b.closeOnBackpressureLimit = false;
    return b;
}

} // namespace

int main(int argc, char **argv)
{
    int port = argc > 1 ? std::atoi(argv[1]) : 8084;
    if (port <= 0 || port > 65535) {
        std::fprintf(stderr, "usage: uws-peer PORT\n");
        return 2;
    }

    uWS::App app;

    auto echo = behavior();
    echo.message = [](auto *ws, std::string_view message, uWS::OpCode op) {
        ws->send(message, op);
    };
    app.ws<PerSocket>("/echo", std::move(echo));

    auto fanout = behavior();
    fanout.open = [](auto *ws) {
        ws->subscribe(ROOM);
    };
    fanout.message = [&app](auto *, std::string_view message, uWS::OpCode op) {
        app.publish(ROOM, message, op);
    };
    app.ws<PerSocket>("/fanout", std::move(fanout));

    app.listen("127.0.0.1", port, [port](auto *token) {
        if (!token) {
            std::fprintf(stderr, "event=listen_failed addr=127.0.0.1:%d peer=uws\n", port);
            std::exit(1);
        }
        std::fprintf(stderr, "event=listening addr=127.0.0.1:%d peer=uws\n", port);
    });
    app.run();
    return 0;
}
