package coordinator

import (
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
)

// leaderlessGrace is how long a node that has known a leader may go
// without one before it calls itself unhealthy: far longer than an
// election, so only a node that stays cut off counts.
const leaderlessGrace = time.Minute

// healthClient asks this node's own HTTP server whether it answers.
var healthClient = &http.Client{Timeout: 2 * time.Second}

// Healthy reports whether this node works, for the systemd watchdog: nil
// while Raft runs, a leader is known (or this node leads), and the HTTP
// server answers a request. Each failure is one a restart can fix: a Raft
// that shut down or a server that stopped answering does not come back by
// itself, and a node that knew a leader and has lost it for
// leaderlessGrace is most likely cut off in a way a fresh start (new
// connections, its state reloaded from disk) repairs; it holds no work of
// its own, so restarting it costs little. A node that never saw a leader
// is still forming its cluster (waiting for --bootstrap-expect peers) and
// counts as healthy.
func (s *Server) Healthy() error {
	r := s.raft.raft
	if r.State() == raft.Shutdown {
		return errors.New("coordinator: raft has shut down")
	}
	now := time.Now()
	if addr, _ := r.LeaderWithID(); addr != "" {
		s.leaderSeen.Store(now.UnixNano())
	} else if seen := s.leaderSeen.Load(); seen != 0 {
		if d := now.Sub(time.Unix(0, seen)); d > leaderlessGrace {
			return fmt.Errorf("coordinator: no raft leader known for %s", d.Round(time.Second))
		}
	}
	resp, err := healthClient.Get("http://" + s.HTTPAddr() + "/healthz")
	if err != nil {
		return fmt.Errorf("coordinator: the HTTP server does not answer: %w", err)
	}
	resp.Body.Close()
	return nil
}
