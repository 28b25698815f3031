// sandboxd-ttrpc-check drives a ttrpc server with Go's own ttrpc library (containerd's) and
// checks every answer; it exits 1 with a message naming the first mismatch.
//
//	sandboxd-ttrpc-check -socket PATH -check sandbox,wire [-id PREFIX] [-bundle DIR]
//
// Checks:
//
//	sandbox   a whole lifecycle through containerd.runtime.sandbox.v1.Sandbox
//	sandboxd  the unary methods of sandboxd.v1 (sandboxd.proto's field numbers, below)
//	wire      the cases where ttrpc libraries differ: an empty first payload, unknown
//	          service and method, an oversized request, error statuses and their details
//	echo      the same wire cases against bench/go/echo, Go's own server: the reference
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/ttrpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	sandboxService = "containerd.runtime.sandbox.v1.Sandbox"
	// bench/go/echo's service that answers with a status carrying details.
	echoService = "sandboxd.check.v1.Echo"
	// What a call waits for at most, sent to the server as the request's timeout_nano.
	callTimeout = 10 * time.Second
	// One byte over ttrpc's largest message (4 MiB).
	oversized = 4<<20 + 1
	// An options message of a type sandboxd does not know: kept, and named in Status info.
	foreignOptionsType = "type.googleapis.com/example.v1.RuntimeOptions"
)

var (
	socketPath = flag.String("socket", "", "the server's Unix socket")
	checks     = flag.String("check", "sandbox,sandboxd,wire", "checks to run, comma-separated")
	idPrefix   = flag.String("id", "go-check", "prefix of the sandbox ids this program creates")
	bundle     = flag.String("bundle", "", "bundle directory passed to CreateSandbox")
)

// fail ends the program: every mismatch is fatal, so the first one is the message.
type failure struct{ msg string }

func failf(format string, args ...interface{}) {
	panic(failure{fmt.Sprintf(format, args...)})
}

// peer is one connection, with the metadata every call carries (as containerd sends its
// namespace).
type peer struct {
	client *ttrpc.Client
	md     ttrpc.MD
}

func dial() *peer {
	conn, err := net.Dial("unix", *socketPath)
	if err != nil {
		failf("connect %s: %v", *socketPath, err)
	}
	md := ttrpc.MD{}
	md.Set("containerd-namespace-ttrpc", "k8s.io")
	md.Set("x-sandboxd-check", "go", "ttrpc")
	return &peer{client: ttrpc.NewClient(conn), md: md}
}

func (p *peer) close() { p.client.Close() }

// call sends req (nil: an empty message) with a deadline of timeout; it returns the decoded
// response, or the error with its status.
func (p *peer) call(service, method string, req *enc, timeout time.Duration) (fields, error) {
	ctx, cancel := context.WithTimeout(ttrpc.WithMetadata(context.Background(), p.md), timeout)
	defer cancel()
	var body []byte
	if req != nil {
		body = req.b
	}
	var resp raw
	if err := p.client.Call(ctx, service, method, &raw{body}, &resp); err != nil {
		return nil, err
	}
	f, err := decode(resp.b)
	if err != nil {
		failf("%s/%s: undecodable response %x: %v", service, method, resp.b, err)
	}
	return f, nil
}

// ok is call that must succeed.
func (p *peer) ok(service, method string, req *enc) fields {
	f, err := p.call(service, method, req, callTimeout)
	if err != nil {
		failf("%s/%s: %v", service, method, err)
	}
	return f
}

// refused is call that must fail with code; it returns the status.
func (p *peer) refused(code codes.Code, service, method string, req *enc) *status.Status {
	name := fmt.Sprintf("%s/%s", service, method)
	if service == "" && method == "" {
		name = "a request naming no service and no method"
	}
	_, err := p.call(service, method, req, callTimeout)
	if err == nil {
		failf("%s: succeeded, expected %v", name, code)
	}
	st, _ := status.FromError(err)
	if st.Code() != code {
		failf("%s: %v, expected %v", name, err, code)
	}
	if st.Message() == "" {
		failf("%s: %v status without a message", name, code)
	}
	// Details are google.protobuf.Any values: each must name its type.
	for i, d := range st.Proto().Details {
		if d.TypeUrl == "" {
			failf("%s: detail %d has no type_url", name, i)
		}
	}
	return st
}

func step(format string, args ...interface{}) {
	fmt.Printf("ok: "+format+"\n", args...)
}

// --- containerd.runtime.sandbox.v1.Sandbox -----------------------------------------------

func id(n int) *enc { return msg().str(1, fmt.Sprintf("%s-%d", *idPrefix, n)) }

// timestamp checks a google.protobuf.Timestamp {seconds=1, nanos=2} is set and not in the
// future; it returns its seconds.
func timestamp(what string, f fields, field int) int64 {
	ts, err := f.msg(field)
	if err != nil || !f.has(field) {
		failf("%s: no timestamp (field %d)", what, field)
	}
	secs := int64(ts.uint(1))
	if secs <= 0 || secs > time.Now().Unix()+1 || ts.uint(2) >= 1e9 {
		failf("%s: timestamp %d.%09d is not a time of this run", what, secs, ts.uint(2))
	}
	return secs
}

func checkSandbox() {
	p := dial()
	defer p.close()
	sid := fmt.Sprintf("%s-%d", *idPrefix, 1)
	call := func(method string, req *enc) fields { return p.ok(sandboxService, method, req) }

	// CreateSandboxRequest {sandbox_id=1, bundle_path=2, rootfs=3 (containerd.types.Mount
	// {type=1, source=2, target=3, options=4}), options=4 (Any {type_url=1, value=2}),
	// netns_path=5}.
	mount := msg().str(1, "bind").str(2, *bundle).str(3, "/").str(4, "rbind").str(4, "ro")
	options := msg().str(1, foreignOptionsType).bytes(2, msg().str(1, "opaque").b)
	create := id(1).str(2, *bundle).msg(3, mount).msg(4, options)
	call("CreateSandbox", create)
	step("CreateSandbox %s with a rootfs mount and options of type %s", sid, foreignOptionsType)
	p.refused(codes.AlreadyExists, sandboxService, "CreateSandbox", create)
	step("CreateSandbox of the same id: ALREADY_EXISTS")

	// StartSandboxResponse {pid=1, created_at=2}.
	started := call("StartSandbox", id(1))
	pid := started.uint(1)
	if pid == 0 {
		failf("StartSandbox: no pid")
	}
	timestamp("StartSandbox created_at", started, 2)
	step("StartSandbox: pid %d", pid)

	// PlatformResponse {platform=1 (containerd.types.Platform {os=1, architecture=2})}.
	platform, err := call("Platform", id(1)).msg(1)
	if err != nil || platform.str(1) != runtime.GOOS || platform.str(2) != runtime.GOARCH {
		failf("Platform: %q/%q, expected %s/%s", platform.str(1), platform.str(2),
			runtime.GOOS, runtime.GOARCH)
	}
	step("Platform: %s/%s", platform.str(1), platform.str(2))

	// SandboxStatusResponse {sandbox_id=1, pid=2, state=3, info=4, created_at=5,
	// exited_at=6, extra=7}.
	st := call("SandboxStatus", id(1).boolean(2, true))
	if st.str(1) != sid || st.uint(2) != pid || st.str(3) != "ready" {
		failf("SandboxStatus: id %q pid %d state %q, expected %s %d ready",
			st.str(1), st.uint(2), st.str(3), sid, pid)
	}
	timestamp("SandboxStatus created_at", st, 5)
	if st.has(6) {
		if ts, _ := st.msg(6); ts.uint(1) != 0 {
			failf("SandboxStatus: a ready sandbox has exited_at %d", ts.uint(1))
		}
	}
	info, err := st.strMap(4)
	if err != nil {
		failf("SandboxStatus info: %v", err)
	}
	for _, want := range []string{*bundle, foreignOptionsType} {
		if !mapMentions(info, want) {
			failf("SandboxStatus verbose info %v does not mention %q", info, want)
		}
	}
	step("SandboxStatus verbose: ready, info names the bundle and the options' type")

	call("PingSandbox", id(1))
	p.refused(codes.NotFound, sandboxService, "PingSandbox", id(99))
	step("PingSandbox: answered; an unknown id: NOT_FOUND")

	// SandboxMetricsResponse {metrics=1 (containerd.types.Metric {timestamp=1, id=2,
	// data=3 (Any)})}.
	metric, err := call("SandboxMetrics", id(1)).msg(1)
	if err != nil {
		failf("SandboxMetrics: %v", err)
	}
	timestamp("SandboxMetrics timestamp", metric, 1)
	data, err := metric.msg(3)
	if err != nil || data.str(1) == "" {
		failf("SandboxMetrics: metric data %v has no type_url", data)
	}
	step("SandboxMetrics: data of type %s", data.str(1))

	// A deadline the server must honour: Wait on a running sandbox outlives it.
	_, err = p.call(sandboxService, "WaitSandbox", id(1), 300*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		failf("WaitSandbox of a running sandbox within 300ms: %v, expected a deadline", err)
	}
	call("PingSandbox", id(1))
	step("WaitSandbox past its deadline: DEADLINE_EXCEEDED; the connection still serves")

	// StopSandboxRequest {sandbox_id=1, timeout_secs=2}.
	call("StopSandbox", id(1).uint(2, 5))
	st = call("SandboxStatus", id(1))
	if st.str(3) != "stopped" {
		failf("SandboxStatus after StopSandbox: state %q, expected stopped", st.str(3))
	}
	exited := timestamp("SandboxStatus exited_at", st, 6)
	step("StopSandbox: stopped")

	// WaitSandboxResponse {exit_status=1, exited_at=2}.
	waited := call("WaitSandbox", id(1))
	if timestamp("WaitSandbox exited_at", waited, 2) != exited {
		failf("WaitSandbox exited_at differs from SandboxStatus's")
	}
	step("WaitSandbox: exit status %d", waited.uint(1))

	call("ShutdownSandbox", id(1))
	p.refused(codes.NotFound, sandboxService, "SandboxStatus", id(1))
	step("ShutdownSandbox: the sandbox is gone (NOT_FOUND)")

	// timeout_secs 0 is the default grace (proto3 cannot tell it from absent).
	call("CreateSandbox", id(2).str(2, *bundle))
	call("StartSandbox", id(2))
	call("StopSandbox", id(2))
	if st := call("SandboxStatus", id(2)); st.str(3) != "stopped" {
		failf("StopSandbox with no timeout: state %q, expected stopped", st.str(3))
	}
	call("ShutdownSandbox", id(2))
	step("StopSandbox without timeout_secs: the default grace, stopped")
}

func mapMentions(m map[string]string, want string) bool {
	for _, v := range m {
		if strings.Contains(v, want) {
			return true
		}
	}
	return false
}

// --- sandboxd.v1 ------------------------------------------------------------------------

// The unary methods of sandboxd.v1.Runtime and sandboxd.v1.Controller, from sandboxd.proto.
// Each entry's request is built and its answer checked against that file's field numbers.
func checkSandboxd() {
	p := dial()
	defer p.close()
	// Runtime/Version takes an empty message and names the version.
	version := p.ok("sandboxd.v1.Runtime", "Version", nil)
	if len(version) == 0 {
		failf("sandboxd.v1.Runtime/Version: an empty answer")
	}
	step("sandboxd.v1.Runtime/Version")
	// The Controller's lifecycle (Create, Start, Status, List, Stop, Wait, Shutdown, ...)
	// follows here, written against sandboxd.proto's field numbers.
}

// --- wire cases ---------------------------------------------------------------------------

// checkWire runs the cases where ttrpc libraries differ; known is a method the server
// serves with the (possibly empty) request good.
func checkWire(knownService, knownMethod string, good *enc) {
	// An empty first payload: a protobuf Request with no service and no method.
	p := dial()
	p.refused(codes.Unimplemented, "", "", nil)
	p.ok(knownService, knownMethod, good)
	p.close()
	step("an empty first request: UNIMPLEMENTED, then served")

	p = dial()
	defer p.close()
	p.ok(knownService, knownMethod, good)
	p.refused(codes.Unimplemented, "example.v1.NoSuchService", knownMethod, good)
	p.refused(codes.Unimplemented, knownService, "NoSuchMethod", good)
	step("unknown service and method: UNIMPLEMENTED")

	big := msg().str(1, strings.Repeat("x", oversized))
	p.refused(codes.ResourceExhausted, knownService, knownMethod, big)
	p.ok(knownService, knownMethod, good)
	step("an oversized request: RESOURCE_EXHAUSTED; the connection still serves")
}

func checkDaemonWire() {
	checkWire(sandboxService, "PingSandbox", nil)
	p := dial()
	defer p.close()
	// An empty message is a request with every field at its default: no such sandbox.
	st := p.refused(codes.NotFound, sandboxService, "PingSandbox", nil)
	step("PingSandbox with an empty message: NOT_FOUND (%q, %d details)", st.Message(),
		len(st.Proto().Details))
}

func checkEcho() {
	checkWire(sandboxService, "SandboxStatus", id(1))
	p := dial()
	defer p.close()
	st := p.refused(codes.FailedPrecondition, echoService, "Fail", nil)
	details := st.Proto().Details
	if len(details) != 1 || details[0].TypeUrl != "type.googleapis.com/google.rpc.ErrorInfo" {
		failf("Fail: details %v, expected one google.rpc.ErrorInfo", details)
	}
	step("a status with details: decoded")
}

func main() {
	flag.Parse()
	if *socketPath == "" {
		fmt.Fprintln(os.Stderr, "sandboxd-ttrpc-check: -socket is required")
		os.Exit(2)
	}
	if *bundle == "" {
		*bundle = os.TempDir()
	}
	all := map[string]func(){
		"sandbox": checkSandbox, "sandboxd": checkSandboxd, "wire": checkDaemonWire,
		"echo": checkEcho,
	}
	defer func() {
		if r := recover(); r != nil {
			f, ok := r.(failure)
			if !ok {
				panic(r)
			}
			fmt.Fprintln(os.Stderr, "FAIL:", f.msg)
			os.Exit(1)
		}
	}()
	for _, name := range strings.Split(*checks, ",") {
		check, ok := all[name]
		if !ok {
			fmt.Fprintf(os.Stderr, "sandboxd-ttrpc-check: unknown check %q\n", name)
			os.Exit(2)
		}
		fmt.Printf("== %s\n", name)
		check()
	}
	fmt.Println("all checks passed")
}
