// A kubelet double built on grpc-go, the gRPC stack real kubelets use, for
// tests/grpc_go.rs (see tests/support/gokubelet.rs, which builds and runs it).
//
// It behaves like a kubelet before 1.26 towards device plugins: it serves
// Registration on <dir>/kubelet.sock and, for each Register, dials the
// plugin's socket with the socket PATH as the HTTP/2 :authority (what
// grpc-go sent for those kubelets' dial target, fixed by
// kubernetes/kubernetes#112597), then calls GetDevicePluginOptions and
// keeps a ListAndWatch stream open.
//
// Messages are raw protobuf bytes (no generated code): requests are encoded
// and RegisterRequest decoded by hand with protowire; responses are printed
// as hex for the Rust side to decode with its own prost types.
//
// Usage: kubelet <dir>
//
// Events on stdout, one per line:
//
//	ready <dir>/kubelet.sock
//	register <resource> <endpoint>
//	options <resource> <hex>
//	list <resource> <hex>
//	end <resource> <grpc code> <message>
//	allocate <resource> <hex> | allocate-error <resource> <code> <message>
//	preferred <resource> <hex> | preferred-error <resource> <code> <message>
//	restarted
//	error <what> <message>
//
// Commands on stdin, one per line (EOF exits):
//
//	allocate <resource> <id>[,<id>...]
//	preferred <resource> <available id>[,<id>...] <size>
//	restart
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// rawCodec passes message bytes through. It is registered under the name
// "proto", replacing grpc-go's default codec, so requests carry the same
// content-type ("application/grpc") as a real kubelet's.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = append([]byte(nil), data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

// callTimeout bounds each unary call, as the kubelet does.
const callTimeout = 10 * time.Second

var outMu sync.Mutex

// emit prints one event line; a message never spans lines.
func emit(format string, args ...interface{}) {
	line := strings.ReplaceAll(fmt.Sprintf(format, args...), "\n", " ")
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Fprintln(os.Stdout, line) // os.Stdout is unbuffered: one write per event
}

// plugin is the kubelet's connection to one registered resource.
type plugin struct {
	conn *grpc.ClientConn
	done chan struct{} // closed when its ListAndWatch reader has returned
}

type kubelet struct {
	dir     string
	mu      sync.Mutex
	server  *grpc.Server
	plugins map[string]*plugin
}

// serve listens on kubelet.sock and serves Registration.
func (k *kubelet) serve() error {
	sock := filepath.Join(k.dir, "kubelet.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	// Any method reaches handle: there is no generated service to register.
	s := grpc.NewServer(grpc.UnknownServiceHandler(k.handle))
	k.mu.Lock()
	k.server = s
	k.mu.Unlock()
	go s.Serve(lis)
	return nil
}

// handle serves /v1beta1.Registration/Register.
func (k *kubelet) handle(_ interface{}, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	if method != "/v1beta1.Registration/Register" {
		return status.Errorf(codes.Unimplemented, "unknown method %s", method)
	}
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	version, endpoint, resource, err := decodeRegister(req)
	if err != nil {
		emit("error register %v", err)
		return status.Errorf(codes.InvalidArgument, "bad RegisterRequest: %v", err)
	}
	if version != "v1beta1" {
		emit("error register %s: unsupported version %q", resource, version)
		return status.Errorf(codes.InvalidArgument, "unsupported API version %q", version)
	}
	emit("register %s %s", resource, endpoint)
	empty := []byte{}
	if err := stream.SendMsg(&empty); err != nil {
		return err
	}
	// Kubelets before 1.25 connected to the plugin after answering.
	go k.connect(resource, filepath.Join(k.dir, endpoint))
	return nil
}

// decodeRegister reads RegisterRequest's string fields (version = 1,
// endpoint = 2, resource_name = 3) and skips the rest (options = 4).
func decodeRegister(b []byte) (version, endpoint, resource string, err error) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", "", "", protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType && num >= 1 && num <= 3 {
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				return "", "", "", protowire.ParseError(m)
			}
			switch num {
			case 1:
				version = string(v)
			case 2:
				endpoint = string(v)
			case 3:
				resource = string(v)
			}
			b = b[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, b)
		if m < 0 {
			return "", "", "", protowire.ParseError(m)
		}
		b = b[m:]
	}
	return version, endpoint, resource, nil
}

// connect dials a plugin as kubelets before 1.26 did, replacing any
// earlier connection for the resource, then reads its options and its
// ListAndWatch stream.
func (k *kubelet) connect(resource, sock string) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	conn, err := grpc.DialContext(ctx, sock,
		grpc.WithInsecure(),
		grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", addr)
		}),
		// What grpc-go derived from those kubelets' target: the path.
		grpc.WithAuthority(sock),
	)
	if err != nil {
		emit("error dial %s %v", resource, err)
		return
	}
	p := &plugin{conn: conn, done: make(chan struct{})}
	k.mu.Lock()
	old := k.plugins[resource]
	k.plugins[resource] = p
	k.mu.Unlock()
	if old != nil {
		old.close()
	}
	go k.run(resource, p)
}

func (p *plugin) close() {
	p.conn.Close()
	<-p.done
}

// run calls GetDevicePluginOptions, then prints every ListAndWatch message
// until the stream ends.
func (k *kubelet) run(resource string, p *plugin) {
	defer close(p.done)
	empty := []byte{}
	var opts []byte
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	err := p.conn.Invoke(ctx, "/v1beta1.DevicePlugin/GetDevicePluginOptions", &empty, &opts)
	cancel()
	if err != nil {
		emit("error options %s %v", resource, err)
		return
	}
	emit("options %s %x", resource, opts)
	desc := &grpc.StreamDesc{StreamName: "ListAndWatch", ServerStreams: true}
	stream, err := p.conn.NewStream(context.Background(), desc, "/v1beta1.DevicePlugin/ListAndWatch")
	if err == nil {
		err = stream.SendMsg(&empty)
	}
	if err == nil {
		err = stream.CloseSend()
	}
	for err == nil {
		var msg []byte
		if err = stream.RecvMsg(&msg); err == nil {
			emit("list %s %x", resource, msg)
		}
	}
	s := status.Convert(err) // io.EOF (a clean end) converts to Unknown
	emit("end %s %d %s", resource, int(s.Code()), s.Message())
}

// call makes one unary call on a resource's connection and prints
// "<what> <resource> <hex>" or "<what>-error <resource> <code> <message>".
func (k *kubelet) call(what, resource, method string, req []byte) {
	k.mu.Lock()
	p := k.plugins[resource]
	k.mu.Unlock()
	if p == nil {
		emit("%s-error %s %d not registered", what, resource, int(codes.Unavailable))
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	defer cancel()
	var resp []byte
	if err := p.conn.Invoke(ctx, method, &req, &resp); err != nil {
		s := status.Convert(err)
		emit("%s-error %s %d %s", what, resource, int(s.Code()), s.Message())
		return
	}
	emit("%s %s %x", what, resource, resp)
}

// restart does what a kubelet restart does to the plugin dir: the old
// server and connections go, every socket is deleted, kubelet.sock is new.
func (k *kubelet) restart() error {
	k.mu.Lock()
	s, plugins := k.server, k.plugins
	k.plugins = map[string]*plugin{}
	k.mu.Unlock()
	s.Stop()
	for _, p := range plugins {
		p.close()
	}
	entries, err := os.ReadDir(k.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.Type()&os.ModeSocket != 0 {
			if err := os.Remove(filepath.Join(k.dir, e.Name())); err != nil {
				return err
			}
		}
	}
	return k.serve()
}

// appendStrings appends each id as the repeated string field num.
func appendStrings(b []byte, num protowire.Number, ids []string) []byte {
	for _, id := range ids {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendString(b, id)
	}
	return b
}

// allocateRequest encodes AllocateRequest{container_requests:
// [ContainerAllocateRequest{devices_ids: ids}]}.
func allocateRequest(ids []string) []byte {
	inner := appendStrings(nil, 1, ids)
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

// preferredRequest encodes PreferredAllocationRequest{container_requests:
// [{available_deviceIDs: ids, allocation_size: size}]}.
func preferredRequest(ids []string, size uint64) []byte {
	inner := appendStrings(nil, 1, ids)
	inner = protowire.AppendTag(inner, 3, protowire.VarintType)
	inner = protowire.AppendVarint(inner, size)
	b := protowire.AppendTag(nil, 1, protowire.BytesType)
	return protowire.AppendBytes(b, inner)
}

func (k *kubelet) command(line string) {
	f := strings.Fields(line)
	switch {
	case len(f) == 3 && f[0] == "allocate":
		k.call("allocate", f[1], "/v1beta1.DevicePlugin/Allocate",
			allocateRequest(strings.Split(f[2], ",")))
	case len(f) == 4 && f[0] == "preferred":
		size, err := strconv.ParseUint(f[3], 10, 31)
		if err != nil {
			emit("error command %q: %v", line, err)
			return
		}
		k.call("preferred", f[1], "/v1beta1.DevicePlugin/GetPreferredAllocation",
			preferredRequest(strings.Split(f[2], ","), size))
	case len(f) == 1 && f[0] == "restart":
		if err := k.restart(); err != nil {
			emit("error restart %v", err)
			return
		}
		emit("restarted")
	default:
		emit("error command %q: unknown", line)
	}
}

func main() {
	encoding.RegisterCodec(rawCodec{})
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: kubelet <dir>")
		os.Exit(2)
	}
	k := &kubelet{dir: os.Args[1], plugins: map[string]*plugin{}}
	if err := k.serve(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	emit("ready %s", filepath.Join(k.dir, "kubelet.sock"))
	// Commands run one at a time; EOF (the test is gone) ends the process.
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		k.command(in.Text())
	}
}
