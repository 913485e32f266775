package agent

import (
	"encoding/json"
	"fmt"
	"net"

	"github.com/hearth-gpu/hearth/proto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/valyala/fasthttp"
	"github.com/valyala/fasthttp/fasthttpadaptor"
)

// httpServer is the agent's own HTTP endpoint: Prometheus metrics and a
// health check for operators, and the blobs this host serves to its peers.
type httpServer struct {
	srv  *fasthttp.Server
	ln   net.Listener
	done chan error
}

// serveHTTP listens on addr and serves until close. When the advertised
// address was left to follow the listen address, it becomes the bound one
// (port 0 in tests picks a free port).
func (a *Agent) serveHTTP(addr string) (*httpServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("agent: listen on %s: pick a free address for the agent's HTTP server: %w", addr, err)
	}
	if a.cfg.Addr == "" || a.cfg.Addr == addr {
		a.cfg.Addr = ln.Addr().String()
	}
	metrics := fasthttpadaptor.NewFastHTTPHandler(promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	h := &httpServer{ln: ln, done: make(chan error, 1)}
	h.srv = &fasthttp.Server{
		Name: "hearth-agent",
		Handler: func(ctx *fasthttp.RequestCtx) {
			path := string(ctx.Path())
			if d, ok := parseBlobPath(path); ok && ctx.IsGet() {
				a.serveBlob(ctx, d)
				return
			}
			switch path {
			case "/metrics":
				metrics(ctx)
			case "/healthz":
				// Liveness: the process serves HTTP.
				ctx.SetContentType("application/json")
				b, _ := json.Marshal(map[string]any{"status": "ok", "host_id": a.cfg.HostID, "version": Version})
				ctx.SetBody(b)
			case "/readyz":
				a.serveReady(ctx)
			default:
				ctx.SetStatusCode(fasthttp.StatusNotFound)
				ctx.SetContentType("application/json")
				ctx.SetBodyString(`{"error":{"code":"not_found","message":"no such route on the agent: try /metrics, /healthz, /readyz or /v1/blobs/{digest}"}}`)
			}
		},
	}
	go func() { h.done <- h.srv.Serve(ln) }()
	a.log.Info("agent HTTP server listening", "addr", ln.Addr().String())
	return h, nil
}

// URL is the agent's HTTP base URL, or "" without a server.
func (a *Agent) URL() string {
	if a.http == nil {
		return ""
	}
	return "http://" + a.http.ln.Addr().String()
}

func (h *httpServer) close() error {
	if err := h.srv.Shutdown(); err != nil {
		return err
	}
	return <-h.done
}

// serveReady answers /readyz: 200 once the agent is registered and reaches
// a coordinator, 503 with the reason while it starts, shuts down or has
// lost the coordinators.
func (a *Agent) serveReady(ctx *fasthttp.RequestCtx) {
	ctx.SetContentType("application/json")
	code, err := a.readiness()
	if err != nil {
		ctx.SetStatusCode(fasthttp.StatusServiceUnavailable)
		b, _ := json.Marshal(proto.APIError{Error: proto.ErrorBody{Code: code, Message: err.Error()}})
		ctx.SetBody(b)
		return
	}
	b, _ := json.Marshal(map[string]any{"status": "ready", "host_id": a.cfg.HostID, "coordinator": a.api.Base(), "version": Version})
	ctx.SetBody(b)
}
