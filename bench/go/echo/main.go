// echo is a Go ttrpc server (containerd's ttrpc library) for the bench's reference column:
// containerd.runtime.sandbox.v1.Sandbox/SandboxStatus answers every request with a
// SandboxStatusResponse for the request's sandbox_id holding what sandboxd's Status of a
// ready sim sandbox holds; sandboxd.check.v1.Echo/Fail answers with a status carrying details.
//
//	echo -socket PATH [-ready-fd N]
//
// It prints READY (to the ready fd, if given) once it listens, and serves until SIGTERM.
package main

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/containerd/ttrpc"
	"github.com/golang/protobuf/ptypes/any"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// raw is a message whose bytes this program writes and reads itself: ttrpc's codec (gogo
// protobuf) calls Marshal and Unmarshal when a message has them.
type raw struct{ b []byte }

func (r *raw) Reset()                   { r.b = nil }
func (r *raw) String() string           { return fmt.Sprintf("%x", r.b) }
func (r *raw) ProtoMessage()            {}
func (r *raw) Marshal() ([]byte, error) { return r.b, nil }
func (r *raw) Unmarshal(b []byte) error { r.b = append([]byte(nil), b...); return nil }

func field(b []byte, num int, wire int) []byte {
	return binary.AppendUvarint(b, uint64(num)<<3|uint64(wire))
}

func bytesField(b []byte, num int, v []byte) []byte {
	b = field(b, num, 2)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func varintField(b []byte, num int, v uint64) []byte {
	return binary.AppendUvarint(field(b, num, 0), v)
}

// sandboxID is field 1 of the request, if it is there first (the bench's requests).
func sandboxID(req []byte) []byte {
	if len(req) < 2 || req[0] != 1<<3|2 {
		return nil
	}
	size, n := binary.Uvarint(req[1:])
	if n <= 0 || uint64(len(req)-1-n) < size {
		return nil
	}
	return req[1+n : 1+n+int(size)]
}

var created = time.Now()

func entry(key, value string) []byte {
	return bytesField(bytesField(nil, 1, []byte(key)), 2, []byte(value))
}

// statusReply is a SandboxStatusResponse {sandbox_id=1, pid=2, state=3, info=4,
// created_at=5} with what sandboxd's Status of a ready sim sandbox says.
func statusReply(id []byte) []byte {
	ts := varintField(varintField(nil, 1, uint64(created.Unix())), 2, uint64(created.Nanosecond()))
	b := bytesField(nil, 1, id)
	b = varintField(b, 2, 1000)
	b = bytesField(b, 3, []byte("ready"))
	b = bytesField(b, 4, entry("sandboxer", "sim"))
	b = bytesField(b, 4, entry("execs", "0"))
	b = bytesField(b, 4, entry("started_at", created.UTC().Format("2006-01-02T15:04:05.000000-07:00")))
	return bytesField(b, 5, ts)
}

func main() {
	socket := flag.String("socket", "", "the Unix socket to serve")
	readyFd := flag.Int("ready-fd", -1, "file descriptor to write READY to once listening")
	flag.Parse()
	server, err := ttrpc.NewServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	server.Register("containerd.runtime.sandbox.v1.Sandbox", map[string]ttrpc.Method{
		"SandboxStatus": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			var req raw
			if err := unmarshal(&req); err != nil {
				return nil, err
			}
			return &raw{statusReply(sandboxID(req.b))}, nil
		},
	})
	server.Register("sandboxd.check.v1.Echo", map[string]ttrpc.Method{
		"Fail": func(ctx context.Context, unmarshal func(interface{}) error) (interface{}, error) {
			// google.rpc.ErrorInfo {reason=1, domain=2}.
			info := bytesField(bytesField(nil, 1, []byte("CHECK")), 2, []byte("sandboxd.check"))
			return nil, status.ErrorProto(&spb.Status{
				Code:    int32(codes.FailedPrecondition),
				Message: "a status with details",
				Details: []*any.Any{{TypeUrl: "type.googleapis.com/google.rpc.ErrorInfo", Value: info}},
			})
		},
	})
	listener, err := net.Listen("unix", *socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
	if *readyFd >= 0 {
		ready := os.NewFile(uintptr(*readyFd), "ready")
		fmt.Fprintln(ready, "READY", *socket)
		ready.Close()
	} else {
		fmt.Println("READY", *socket)
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		server.Close()
	}()
	if err := server.Serve(context.Background(), listener); err != nil && err != ttrpc.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}
