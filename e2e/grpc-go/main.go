// Command weft-grpc-go-client is a proxyless gRPC xDS client (grpc-go) for the tests, driven
// over stdin like ../xds/client.py.
//
// Usage:
//
//	weft-grpc-go-client BOOTSTRAP TARGET
//
// Commands, one per line; each answers with one JSON line on stdout:
//
//	call N -> {"counts": {name: n, ...}, "errors": n, "last_error": "..."}
//	csds   -> {"resources": [{"type": ..., "name": ..., "status": ..., "error": ...}]}
//	eds    -> {"assignments": {cluster: ["address:port", ...]}}
//
// csds and eds are the client's own view, from grpc-go's CSDS server called in process.
// Each call is /echo.Echo/Who with an empty request; the backends (../xds/backend.py)
// answer with their name as raw bytes. The node metadata comes from the bootstrap file, whose
// channel_creds may be "insecure" or "tls" (gRFC A65: ca_certificate_file, certificate_file,
// private_key_file), both registered by importing google.golang.org/grpc/xds. Errors go to
// stderr only.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds/csds"

	// The xds resolver and balancers, and the bootstrap's channel credentials ("insecure",
	// "tls", "google_default"): xds/bootstrap registers them in its init, reached through
	// internal/xds/bootstrap.
	_ "google.golang.org/grpc/xds"
)

const bootstrapEnv = "GRPC_XDS_BOOTSTRAP"

// rawCodec passes messages through as bytes: the backends speak no protobuf schema, only
// their name. Named "proto" so the content-type is the usual application/grpc+proto; an
// empty message is the same on the wire either way.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("rawCodec: cannot marshal %T", v)
	}
	return *b, nil
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("rawCodec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

func (rawCodec) Name() string { return "proto" }

type callsAnswer struct {
	Counts    map[string]int `json:"counts"`
	Errors    int            `json:"errors"`
	LastError string         `json:"last_error"`
}

type resource struct {
	Type   string `json:"type"`
	Name   string `json:"name"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: weft-grpc-go-client BOOTSTRAP TARGET")
		os.Exit(2)
	}
	// grpc-go reads GRPC_XDS_BOOTSTRAP once, when its internal/envconfig package is
	// initialised, before main runs: setting it here would come too late, so the program
	// sets it and executes itself again.
	if os.Getenv(bootstrapEnv) != os.Args[1] {
		os.Setenv(bootstrapEnv, os.Args[1])
		err := syscall.Exec("/proc/self/exe", os.Args, os.Environ())
		fmt.Fprintf(os.Stderr, "re-executing with %s set: %v\n", bootstrapEnv, err)
		os.Exit(1)
	}
	target := os.Args[2]
	// Insecure data-plane credentials: the backends serve plaintext. The xDS channel's own
	// credentials come from the bootstrap's channel_creds.
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "dial %s: %v\n", target, err)
		os.Exit(1)
	}
	defer conn.Close()
	server, err := csds.NewClientStatusDiscoveryServer()
	if err != nil {
		fmt.Fprintf(os.Stderr, "CSDS: %v\n", err)
		os.Exit(1)
	}

	out := json.NewEncoder(os.Stdout)
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		words := strings.Fields(lines.Text())
		if len(words) == 0 {
			continue
		}
		var answer any
		switch words[0] {
		case "call":
			n, err := strconv.Atoi(safe(words, 1))
			if err != nil {
				fmt.Fprintf(os.Stderr, "call: bad count %q\n", safe(words, 1))
				continue
			}
			answer = calls(conn, n)
		case "csds":
			dump, err := clientStatus(server)
			if err != nil {
				fmt.Fprintf(os.Stderr, "csds: %v\n", err)
				continue
			}
			answer = map[string]any{"resources": resources(dump)}
		case "eds":
			dump, err := clientStatus(server)
			if err != nil {
				fmt.Fprintf(os.Stderr, "eds: %v\n", err)
				continue
			}
			answer = map[string]any{"assignments": assignments(dump)}
		default:
			fmt.Fprintf(os.Stderr, "unknown command %q\n", words[0])
			continue
		}
		// One line per answer; stdout is unbuffered, so the tests see it at once.
		if err := out.Encode(answer); err != nil {
			fmt.Fprintf(os.Stderr, "write answer: %v\n", err)
			os.Exit(1)
		}
	}
}

func safe(words []string, i int) string {
	if i < len(words) {
		return words[i]
	}
	return ""
}

// calls makes n calls, one at a time. Each has a 5-second deadline like the other clients'
// and fails fast when the channel is in transient failure (no wait-for-ready).
func calls(conn *grpc.ClientConn, n int) callsAnswer {
	answer := callsAnswer{Counts: map[string]int{}}
	for range n {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		request, response := []byte{}, []byte{}
		err := conn.Invoke(ctx, "/echo.Echo/Who", &request, &response,
			grpc.ForceCodec(rawCodec{}), grpc.WaitForReady(false))
		cancel()
		if err != nil {
			answer.Errors++
			s := status.Convert(err)
			answer.LastError = fmt.Sprintf("%s: %s", s.Code(), s.Message())
			continue
		}
		answer.Counts[string(response)]++
	}
	return answer
}

func clientStatus(server *csds.ClientStatusDiscoveryServer) (*statuspb.ClientStatusResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return server.FetchClientStatus(ctx, &statuspb.ClientStatusRequest{})
}

// resources lists every resource the client holds or asked for, with its status (ACKED,
// NACKED, REQUESTED, DOES_NOT_EXIST, …) and the last NACK's details.
func resources(dump *statuspb.ClientStatusResponse) []resource {
	out := []resource{}
	for _, config := range dump.GetConfig() {
		for _, c := range config.GetGenericXdsConfigs() {
			out = append(out, resource{
				Type:   c.GetTypeUrl(),
				Name:   c.GetName(),
				Status: c.GetClientStatus().String(),
				Error:  c.GetErrorState().GetDetails(),
			})
		}
	}
	return out
}

// assignments maps each load assignment the client holds to its endpoints' addresses.
func assignments(dump *statuspb.ClientStatusResponse) map[string][]string {
	out := map[string][]string{}
	for _, config := range dump.GetConfig() {
		for _, c := range config.GetGenericXdsConfigs() {
			if !strings.HasSuffix(c.GetTypeUrl(), "ClusterLoadAssignment") || c.GetXdsConfig() == nil {
				continue
			}
			var cla endpointpb.ClusterLoadAssignment
			if err := c.GetXdsConfig().UnmarshalTo(&cla); err != nil {
				fmt.Fprintf(os.Stderr, "eds: %s: %v\n", c.GetName(), err)
				continue
			}
			addresses := []string{}
			for _, locality := range cla.GetEndpoints() {
				for _, e := range locality.GetLbEndpoints() {
					a := e.GetEndpoint().GetAddress().GetSocketAddress()
					addresses = append(addresses, fmt.Sprintf("%s:%d", a.GetAddress(), a.GetPortValue()))
				}
			}
			out[c.GetName()] = addresses
		}
	}
	return out
}
