// Peer for bench/peers.sh: gorilla/websocket as an echo server on /echo and
// a broadcast server on /fanout. Broadcast frames each message once
// (websocket.PreparedMessage, gorilla's way to send one message to many
// connections) and hands it to every /fanout connection's writer goroutine,
// the sender included; a connection whose queue is full is dropped, as in
// gorilla's chat example. No compression, like chatd.
//
// Built offline from Debian's golang-github-gorilla-websocket-dev:
//   GOPATH=/usr/share/gocode GO111MODULE=off go build -o gorilla-peer .
// usage: gorilla-peer -addr 127.0.0.1:PORT
package main

import (
	"flag"
	"log"
	"net/http"
	"os"
	"sync"

	"github.com/gorilla/websocket"
)

var upgrader = websocket.Upgrader{
	ReadBufferSize:  4096,
	WriteBufferSize: 4096,
	CheckOrigin:     func(r *http.Request) bool { return true },
}

type client struct {
	conn *websocket.Conn
	send chan *websocket.PreparedMessage
}

type room struct {
	mu      sync.Mutex
	clients map[*client]struct{}
}

var hub = room{clients: make(map[*client]struct{})}

func echo(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

func (cl *client) writePump() {
	defer cl.conn.Close()
	for pm := range cl.send {
		if err := cl.conn.WritePreparedMessage(pm); err != nil {
			return
		}
	}
}

func fanout(w http.ResponseWriter, r *http.Request) {
	c, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	cl := &client{conn: c, send: make(chan *websocket.PreparedMessage, 1024)}
	hub.mu.Lock()
	hub.clients[cl] = struct{}{}
	hub.mu.Unlock()
	go cl.writePump()
	defer func() {
		hub.mu.Lock()
		if _, ok := hub.clients[cl]; ok {
			delete(hub.clients, cl)
			close(cl.send)
		}
		hub.mu.Unlock()
		c.Close()
	}()
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		pm, err := websocket.NewPreparedMessage(mt, msg)
		if err != nil {
			return
		}
		hub.mu.Lock()
		for peer := range hub.clients {
			select {
			case peer.send <- pm:
			default: // too slow: drop it
				delete(hub.clients, peer)
				close(peer.send)
			}
		}
		hub.mu.Unlock()
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8083", "listen address")
	flag.Parse()
	http.HandleFunc("/echo", echo)
	http.HandleFunc("/fanout", fanout)
	log.SetFlags(0)
	log.Printf("event=listening addr=%s peer=gorilla", *addr)
	if err := http.ListenAndServe(*addr, nil); err != nil {
		log.Print(err)
		os.Exit(1)
	}
}
