// A Go client of the connect protocol over TCP, written from proto/PROTOCOL.md section 1 with
// google.golang.org/protobuf alone: packing an Any, writing length-delimited frames, and reading
// frames off a stream through a bufio.Reader (a frame may arrive in pieces). It sends 8 messages
// to tcp-echo-server and checks the echoes. The snippets in PROTOCOL.md ("From Go") are the
// functions pack, writeFrame and readFrame below.
//
//	go run tcp_client.go HOST:PORT
//
// Prints "ok: ..." lines and exits 0, or exits 1 with the reason. Run by tests/ws_interop.rs.
// Needs google.golang.org/protobuf 1.20 or later (Debian: golang-google-protobuf-dev); with
// 1.29 or later, protodelim.MarshalTo / UnmarshalFrom do what writeFrame / readFrame do.
package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The maximum frame length a receiver accepts (section 1: 16 MiB by default).
const maxFrameLen = 16 << 20

// pack wraps a message in an Any with the type.googleapis.com/ prefix (anypb.New does).
func pack(m proto.Message) (*anypb.Any, error) { return anypb.New(m) }

// writeFrame writes one frame: varint(len) ++ Any.
func writeFrame(w io.Writer, any *anypb.Any) error {
	body, err := proto.Marshal(any)
	if err != nil {
		return err
	}
	frame := protowire.AppendVarint(nil, uint64(len(body)))
	_, err = w.Write(append(frame, body...))
	return err
}

// readFrame reads one frame; io.EOF between frames is the end of the stream.
func readFrame(r *bufio.Reader) (*anypb.Any, error) {
	n, err := binary.ReadUvarint(r) // waits for the whole prefix
	if err != nil {
		return nil, err
	}
	if n > maxFrameLen {
		return nil, fmt.Errorf("frame of %d bytes exceeds the maximum", n)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil { // waits for the whole frame
		return nil, err
	}
	any := &anypb.Any{}
	return any, proto.Unmarshal(body, any)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "FAILED: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) != 2 {
		fail("usage: go run tcp_client.go HOST:PORT")
	}
	conn, err := net.DialTimeout("tcp", os.Args[1], 10*time.Second)
	if err != nil {
		fail("connect: %v", err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	// Sizes around the varint boundaries of the prefix (1, 2 and 3 bytes), and one large
	// enough to arrive in several reads.
	sizes := []int{0, 1, 60, 127, 128, 300, 16383, 200000}
	w := bufio.NewWriter(conn)
	for i, size := range sizes {
		any, err := pack(wrapperspb.String(fmt.Sprintf("%d:%s", i, strings.Repeat("x", size))))
		if err != nil {
			fail("pack: %v", err)
		}
		if i == 0 {
			fmt.Printf("ok: packed as %s\n", any.TypeUrl)
		}
		if err := writeFrame(w, any); err != nil {
			fail("write: %v", err)
		}
	}
	if err := w.Flush(); err != nil {
		fail("flush: %v", err)
	}
	r := bufio.NewReader(conn)
	for i, size := range sizes {
		any, err := readFrame(r)
		if err != nil {
			fail("read echo %d: %v", i, err)
		}
		var text wrapperspb.StringValue
		if err := any.UnmarshalTo(&text); err != nil {
			fail("echo %d: %v (type %s)", i, err, any.TypeUrl)
		}
		if text.Value != fmt.Sprintf("%d:%s", i, strings.Repeat("x", size)) {
			fail("echo %d differs", i)
		}
	}
	fmt.Printf("ok: %d messages echoed unchanged\n", len(sizes))
}
