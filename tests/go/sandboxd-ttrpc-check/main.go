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
//	details   a status with details: a call over the server's per-connection call limit,
//	          which must be 1
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
	rootfs     = flag.Bool("rootfs", false,
		"the server's default sandboxer honours rootfs mounts (else it must refuse them)")
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
	if !*rootfs {
		// A sandboxer that runs on the host's filesystem refuses the mount, naming it.
		st := p.refused(codes.InvalidArgument, sandboxService, "CreateSandbox", create)
		if !strings.Contains(st.Message(), "rootfs") {
			failf("CreateSandbox with a rootfs: %q does not name rootfs", st.Message())
		}
		step("CreateSandbox with a rootfs mount: INVALID_ARGUMENT naming rootfs")
		create = id(1).str(2, *bundle).msg(4, options)
	}
	call("CreateSandbox", create)
	step("CreateSandbox %s with options of type %s", sid, foreignOptionsType)
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

const (
	runtimeService    = "sandboxd.v1.Runtime"
	controllerService = "sandboxd.v1.Controller"
	// ttrpc's largest message, which Version's limits name as max_message_bytes.
	maxMessage = 4 << 20
)

// The unary methods of sandboxd.v1.Runtime and sandboxd.v1.Controller, from sandboxd.proto.
// Each request is built and each answer checked against that file's field numbers.
func checkSandboxd() {
	p := dial()
	defer p.close()
	ctl := func(method string, req *enc) fields { return p.ok(controllerService, method, req) }

	// Version(Empty) -> VersionResponse {version=1, protocol=2, cgroups=3, limits=4
	// (Limits {max_connections=1, max_calls_per_connection=2, ..., max_message_bytes=6})}.
	version := p.ok(runtimeService, "Version", nil)
	limits, err := version.msg(4)
	if version.str(1) == "" || version.uint(2) != 1 || err != nil {
		failf("%s/Version: version %q protocol %d, expected a version and protocol 1",
			runtimeService, version.str(1), version.uint(2))
	}
	if limits.uint(1) == 0 || limits.uint(2) == 0 || limits.uint(6) != maxMessage {
		failf("%s/Version: limits %v, expected the server's (max_message_bytes %d)",
			runtimeService, limits, maxMessage)
	}
	step("Version: %s, protocol 1, %d calls per connection", version.str(1), limits.uint(2))

	sid := fmt.Sprintf("%s-sd-1", *idPrefix)
	other := fmt.Sprintf("%s-sd-2", *idPrefix)
	box := func(id string) *enc { return msg().str(1, id) }
	label := fmt.Sprintf("%s-list", *idPrefix)

	// Create(CreateRequest {sandbox_id=1, sandboxer=2, options=3 (SandboxOptions {env=2,
	// cwd=3}), annotations=6, labels=7}) -> CreateResponse {sandbox_id=1}.
	options := msg().entry(2, "GO_CHECK", "1").str(3, "/")
	create := box(sid).msg(3, options).entry(6, "example.com/note", "go").entry(7, "app", label)
	if got := ctl("Create", create).str(1); got != sid {
		failf("Create: sandbox_id %q, expected %q", got, sid)
	}
	p.refused(codes.AlreadyExists, controllerService, "Create", create)
	st := p.refused(codes.InvalidArgument, controllerService, "Create", box(""))
	if !strings.Contains(st.Message(), "sandbox_id") {
		failf("Create without an id: %q does not name sandbox_id", st.Message())
	}
	step("Create %s; again: ALREADY_EXISTS; without an id: INVALID_ARGUMENT naming it", sid)

	// Start(SandboxRequest {sandbox_id=1}) -> StartResponse {sandbox_id=1, pid=2,
	// created_at=3, labels=4}.
	started := ctl("Start", box(sid))
	pid := started.uint(2)
	labels, err := started.strMap(4)
	if started.str(1) != sid || pid == 0 || err != nil || labels["app"] != label {
		failf("Start: id %q pid %d labels %v, expected %s, a pid and app=%s",
			started.str(1), pid, labels, sid, label)
	}
	timestamp("Start created_at", started, 3)
	step("Start: pid %d", pid)

	// Platform -> PlatformResponse {platform=1 (Platform {os=1, architecture=2})}.
	platform, err := ctl("Platform", box(sid)).msg(1)
	if err != nil || platform.str(1) != runtime.GOOS || platform.str(2) != runtime.GOARCH {
		failf("Platform: %q/%q, expected %s/%s", platform.str(1), platform.str(2),
			runtime.GOOS, runtime.GOARCH)
	}
	step("Platform: %s/%s", platform.str(1), platform.str(2))

	// Status(StatusRequest {sandbox_id=1, verbose=2}) -> SandboxStatus {sandbox_id=1, pid=2,
	// state=3, info=4, created_at=5, exited_at=6}.
	got := ctl("Status", box(sid).boolean(2, true))
	if got.str(1) != sid || got.uint(2) != pid || got.str(3) != "ready" {
		failf("Status: id %q pid %d state %q, expected %s %d ready",
			got.str(1), got.uint(2), got.str(3), sid, pid)
	}
	if info, err := got.strMap(4); err != nil || len(info) == 0 {
		failf("Status verbose: info %v (%v), expected some", info, err)
	}
	timestamp("Status created_at", got, 5)
	step("Status verbose: ready, with info")

	ctl("Ping", box(sid))
	p.refused(codes.NotFound, controllerService, "Ping", box(*idPrefix+"-none"))
	step("Ping: answered; an unknown id: NOT_FOUND")

	// List(ListRequest {labels=1, limit=2, page_token=3}) -> ListResponse {sandboxes=1,
	// next_page_token=2}: one sandbox a page, followed to the end.
	ctl("Create", box(other).entry(7, "app", label))
	seen := map[string]string{}
	token := ""
	for page := 0; ; page++ {
		req := msg().entry(1, "app", label).uint(2, 1).str(3, token)
		list := ctl("List", req)
		boxes, err := list.msgs(1)
		if err != nil || len(boxes) > 1 || page > 3 {
			failf("List page %d: %d sandboxes (%v), expected at most 1 in 3 pages", page,
				len(boxes), err)
		}
		for _, b := range boxes {
			seen[b.str(1)] = b.str(3)
		}
		if token = list.str(2); token == "" {
			break
		}
	}
	if len(seen) != 2 || seen[sid] != "ready" || seen[other] != "created" {
		failf("List by label, a page at a time: %v, expected %s ready and %s created",
			seen, sid, other)
	}
	step("List: both sandboxes, one page at a time")

	// Metrics -> SandboxMetrics {sandbox_id=1, timestamp=2, cpu_ns=3, memory_rss_bytes=4,
	// pids=5}.
	metrics := ctl("Metrics", box(sid))
	if metrics.str(1) != sid {
		failf("Metrics: sandbox_id %q, expected %q", metrics.str(1), sid)
	}
	timestamp("Metrics timestamp", metrics, 2)
	step("Metrics: %d pids, %d bytes resident", metrics.uint(5), metrics.uint(4))

	// ExecSync(ExecSyncRequest {sandbox_id=1, command=2, env=4, timeout_secs=6}) ->
	// ExecSyncResponse {exec_id=1, stdout=2, stderr=3, exit_status=4, timed_out=5}.
	run := box(sid).str(2, "sh").str(2, "-c").str(2, "echo out $GO_EXEC; echo err >&2; exit 3")
	ran := ctl("ExecSync", run.entry(4, "GO_EXEC", "go").double(6, 10))
	if ran.str(1) == "" || ran.str(2) != "out go\n" || ran.str(3) != "err\n" ||
		ran.uint(4) != 3 || ran.uint(5) != 0 {
		failf("ExecSync: exec_id %q stdout %q stderr %q exit %d timed out %d", ran.str(1),
			ran.str(2), ran.str(3), ran.uint(4), ran.uint(5))
	}
	step("ExecSync: output, error output and exit status 3")

	// A deadline the server must honour: Wait on a running sandbox outlives it.
	_, err = p.call(controllerService, "Wait", box(sid), 300*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) && status.Code(err) != codes.DeadlineExceeded {
		failf("Wait of a running sandbox within 300ms: %v, expected a deadline", err)
	}
	ctl("Ping", box(sid))
	step("Wait past its deadline: DEADLINE_EXCEEDED; the connection still serves")

	// Stop(StopRequest {sandbox_id=1, timeout_secs=2 (a double)}) -> Empty.
	if stopped := ctl("Stop", box(sid).double(2, 5)); len(stopped) != 0 {
		failf("Stop: answer %v, expected the empty message", stopped)
	}
	got = ctl("Status", box(sid))
	if got.str(3) != "stopped" {
		failf("Status after Stop: state %q, expected stopped", got.str(3))
	}
	exited := timestamp("Status exited_at", got, 6)
	step("Stop: stopped")

	// Wait -> WaitResponse {exit_status=1, exited_at=2}.
	waited := ctl("Wait", box(sid))
	if timestamp("Wait exited_at", waited, 2) != exited {
		failf("Wait exited_at differs from Status's")
	}
	step("Wait: exit status %d", waited.uint(1))

	// Shutdown -> Empty; the sandbox is gone.
	ctl("Shutdown", box(sid))
	ctl("Shutdown", box(other))
	p.refused(codes.NotFound, controllerService, "Status", box(sid))
	step("Shutdown: both sandboxes gone (NOT_FOUND)")
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
	checkWire(runtimeService, "Version", nil)
	p := dial()
	defer p.close()
	// An empty message is a request with every field at its default: an empty id, refused
	// as the CBOR envelope refuses it.
	st := p.refused(codes.InvalidArgument, sandboxService, "PingSandbox", nil)
	if !strings.Contains(st.Message(), "sandbox_id") || len(st.Proto().Details) != 0 {
		failf("PingSandbox with an empty message: %q with %d details, expected sandbox_id named",
			st.Message(), len(st.Proto().Details))
	}
	step("PingSandbox with an empty message: INVALID_ARGUMENT naming sandbox_id")
}

// The one detail of a refusal for a per-connection call limit of 1: a sandboxd.v1.ErrorDetail
// {cbor=1} holding the CBOR map {"max_calls_per_connection": 1}.
const errorDetailType = "type.googleapis.com/sandboxd.v1.ErrorDetail"

var callLimitDetail = append(append([]byte{0xa1, 0x78, 24}, "max_calls_per_connection"...), 1)

// checkDetails needs a server whose per-connection call limit is 1: of two Waits on one
// connection (calls, unlike the methods answered at once), one runs to its deadline and the
// other is refused with a status carrying a detail.
func checkDetails() {
	p := dial()
	defer p.close()
	sid := fmt.Sprintf("%s-limit", *idPrefix)
	p.ok(controllerService, "Create", msg().str(1, sid))
	p.ok(controllerService, "Start", msg().str(1, sid))
	defer func() {
		// On a connection of its own: the server may still count the Wait given up on.
		q := dial()
		defer q.close()
		q.ok(controllerService, "Shutdown", msg().str(1, sid))
	}()
	ended := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := p.call(controllerService, "Wait", msg().str(1, sid), 500*time.Millisecond)
			ended <- err
		}()
	}
	var refused *status.Status
	timedOut := 0
	for i := 0; i < 2; i++ {
		err := <-ended
		switch {
		case status.Code(err) == codes.ResourceExhausted:
			refused, _ = status.FromError(err)
		case errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded:
			timedOut++
		default:
			failf("Wait of a running sandbox: %v, expected its deadline or RESOURCE_EXHAUSTED", err)
		}
	}
	if refused == nil || timedOut != 1 {
		failf("two Waits on a connection limited to one call: %d timed out, refused %v",
			timedOut, refused)
	}
	details := refused.Proto().Details
	if len(details) != 1 || details[0].TypeUrl != errorDetailType {
		failf("a call over the limit: details %v, expected one %s", details, errorDetailType)
	}
	detail, err := decode(details[0].Value)
	if err != nil || string(detail.last(1).b) != string(callLimitDetail) {
		failf("a call over the limit: detail %x, expected the CBOR %x", details[0].Value,
			callLimitDetail)
	}
	step("a call over the per-connection call limit: RESOURCE_EXHAUSTED with its detail")
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
		"details": checkDetails, "echo": checkEcho,
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
