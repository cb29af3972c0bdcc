// Command weft-envoy-validate runs go-control-plane's generated protoc-gen-validate checks
// (ValidateAll) over xDS resources: every constraint Envoy's protos declare, which Envoy
// itself enforces when it takes an update. Typed configs packed in google.protobuf.Any
// (HTTP connection managers, filters, access loggers, protocol options) are unpacked and
// validated too, as Envoy does when it instantiates them; a type it cannot unpack is a
// finding, since Envoy would not know it either.
//
// Usage:
//
//	weft-envoy-validate FILE
//	weft-envoy-validate -json FILE
//	weft-envoy-validate -bootstrap FILE
//
// FILE holds one binary envoy.service.discovery.v3.DiscoveryResponse whose resources are
// the resources to check (any mix of types); with -json, the same as JSON (what Envoy's
// path_config_source reads, such as SDS files); with -bootstrap, an Envoy bootstrap as
// JSON, parsed as Envoy parses its config file (an unknown field is an error). Each finding
// is printed as one JSON line {"type", "name", "error"}; the exit code is 1 when there is
// any, 2 on bad input.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	bootstrap "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	// The types Weft serves and packs, registered for anypb.UnmarshalNew.
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/trace/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

type finding struct {
	Type  string `json:"type"`
	Name  string `json:"name"`
	Error string `json:"error"`
}

// validator is what protoc-gen-validate generates for every Envoy message.
type validator interface{ ValidateAll() error }

func main() {
	args := os.Args[1:]
	mode := ""
	if len(args) == 2 && (args[0] == "-json" || args[0] == "-bootstrap") {
		mode, args = args[0], args[1:]
	}
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: weft-envoy-validate [-json | -bootstrap] FILE")
		os.Exit(2)
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if mode == "-bootstrap" {
		var b bootstrap.Bootstrap
		if err := protojson.Unmarshal(data, &b); err != nil {
			fmt.Fprintln(os.Stderr, "not a bootstrap Envoy accepts:", err)
			os.Exit(2)
		}
		report([]proto.Message{&b}, 1)
		return
	}
	var response discovery.DiscoveryResponse
	unmarshal := proto.Unmarshal
	if mode == "-json" {
		unmarshal = func(b []byte, m proto.Message) error { return protojson.Unmarshal(b, m) }
	}
	if err := unmarshal(data, &response); err != nil {
		fmt.Fprintln(os.Stderr, "not a DiscoveryResponse:", err)
		os.Exit(2)
	}
	var found []finding
	var messages []proto.Message
	for _, any := range response.GetResources() {
		msg, err := anypb.UnmarshalNew(any, proto.UnmarshalOptions{})
		if err != nil {
			found = append(found, finding{any.GetTypeUrl(), "", "does not unpack: " + err.Error()})
			continue
		}
		messages = append(messages, msg)
	}
	report(messages, len(response.GetResources()), found...)
}

// report validates messages, prints every finding (after those already found), and exits
// 1 when there is any.
func report(messages []proto.Message, checked int, found ...finding) {
	for _, msg := range messages {
		name := nameOf(msg)
		typeName := "type.googleapis.com/" + string(msg.ProtoReflect().Descriptor().FullName())
		for _, e := range validate(msg) {
			found = append(found, finding{typeName, name, e})
		}
	}
	out := json.NewEncoder(os.Stdout)
	for _, f := range found {
		_ = out.Encode(f)
	}
	fmt.Fprintf(os.Stderr, "checked %d resources: %d findings\n", checked, len(found))
	if len(found) > 0 {
		os.Exit(1)
	}
}

// nameOf reads a resource's name: `name`, or a load assignment's `cluster_name`.
func nameOf(m proto.Message) string {
	r := m.ProtoReflect()
	for _, field := range []protoreflect.Name{"name", "cluster_name"} {
		if fd := r.Descriptor().Fields().ByName(field); fd != nil && fd.Kind() == protoreflect.StringKind {
			return r.Get(fd).String()
		}
	}
	return ""
}

// validate runs ValidateAll on m and on every message packed in an Any beneath it.
func validate(m proto.Message) []string {
	var out []string
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			out = append(out, flatten(err)...)
		}
	}
	walk(m.ProtoReflect(), func(any *anypb.Any) {
		inner, err := anypb.UnmarshalNew(any, proto.UnmarshalOptions{})
		if err != nil {
			out = append(out, fmt.Sprintf("typed config %s does not unpack: %v", any.GetTypeUrl(), err))
			return
		}
		for _, e := range validate(inner) {
			out = append(out, any.GetTypeUrl()+": "+e)
		}
	})
	return out
}

// walk calls f for every Any directly beneath m (the Anys' own insides are validate's).
func walk(m protoreflect.Message, f func(*anypb.Any)) {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		visit := func(v protoreflect.Value) {
			msg := v.Message()
			if any, ok := msg.Interface().(*anypb.Any); ok {
				f(any)
				return
			}
			walk(msg, f)
		}
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				visit(l.Get(i))
			}
		case fd.IsMap() && fd.MapValue().Kind() == protoreflect.MessageKind:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				visit(mv)
				return true
			})
		case !fd.IsList() && !fd.IsMap() && fd.Kind() == protoreflect.MessageKind:
			visit(v)
		}
		return true
	})
}

// flatten splits a ValidateAll multi-error into its causes.
func flatten(err error) []string {
	var multi interface{ AllErrors() []error }
	if errors.As(err, &multi) {
		var out []string
		for _, e := range multi.AllErrors() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}
