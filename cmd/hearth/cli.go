package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/hearth-gpu/hearth/client"
	"github.com/hearth-gpu/hearth/proto"
)

func defaultAddr() string {
	if a := os.Getenv("HEARTH_ADDR"); a != "" {
		return a
	}
	return "http://127.0.0.1:7700"
}

// newClient returns a client for the --addr nodes with the --token.
func newClient(addr, token string) *client.Client {
	return client.New(addr, nil).WithToken(token)
}

func runJob(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usagef("job needs a subcommand: submit, get, ls, cancel, retry or watch")
	}
	fs := newFlags("job "+args[0], stderr)
	addr := fs.String("addr", defaultAddr(), "coordinator API URL (several, comma-separated, to fail over)")
	token := fs.String("token", os.Getenv("HEARTH_TOKEN"), "bearer token (default $HEARTH_TOKEN)")
	key := fs.String("idempotency-key", "", "submit: a key that makes retrying this submission safe")
	reason := fs.String("reason", "", "cancel: why, recorded on the job")
	wait := fs.Bool("wait", false, "submit: wait for the job to finish and print it")
	timeout := fs.Duration("timeout", 10*time.Minute, "submit --wait: give up after this long")
	state := fs.String("state", "", "ls: only jobs in this state")
	limit := fs.Int("limit", 50, "ls: at most this many jobs")
	sub, rest := args[0], args[1:]
	// Accept flags before or after the positional argument.
	var pos []string
	for len(rest) > 0 {
		if err := parseFlags(fs, rest); err != nil {
			return err
		}
		rest = fs.Args()
		if len(rest) > 0 {
			pos, rest = append(pos, rest[0]), rest[1:]
		}
	}
	api := newClient(*addr, *token)
	ctx, cancel := context.WithTimeout(context.Background(), *timeout+30*time.Second)
	defer cancel()
	switch sub {
	case "submit":
		if len(pos) != 1 {
			return usagef("job submit needs one FILE (a ComfyUI API-format workflow or a job spec)")
		}
		body, err := readSpecFile(pos[0])
		if err != nil {
			return err
		}
		opt := client.SubmitOptions{IdempotencyKey: *key}
		if *wait {
			// The coordinator holds the answer up to a minute; past that,
			// poll.
			opt.Wait = min(*timeout, time.Minute)
		}
		j, _, err := api.Submit(ctx, body, opt)
		if err != nil {
			return err
		}
		if *wait && !j.State.Terminal() {
			wctx, wcancel := context.WithTimeout(ctx, *timeout)
			defer wcancel()
			if j, err = api.WaitJob(wctx, j.ID, 200*time.Millisecond); err != nil {
				return err
			}
		}
		return printJSON(stdout, j)
	case "cancel", "retry":
		if len(pos) != 1 {
			return usagef("job %s needs one job ID", sub)
		}
		var j *proto.Job
		var err error
		if sub == "cancel" {
			j, err = api.Cancel(ctx, pos[0], *reason)
		} else {
			j, err = api.Retry(ctx, pos[0])
		}
		if err != nil {
			return err
		}
		return printJSON(stdout, j)
	case "watch":
		if len(pos) != 1 {
			return usagef("job watch needs one job ID")
		}
		return api.WatchJob(ctx, pos[0], 0, func(ev client.Event) error {
			_, err := fmt.Fprintf(stdout, "%s %s\n", ev.Type, ev.Data)
			return err
		})
	case "get":
		if len(pos) != 1 {
			return usagef("job get needs one job ID")
		}
		j, err := api.Job(ctx, pos[0])
		if err != nil {
			return err
		}
		return printJSON(stdout, j)
	case "ls":
		q := url.Values{"limit": {fmt.Sprint(*limit)}}
		if *state != "" {
			q.Set("state", *state)
		}
		l, err := api.Jobs(ctx, q)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tSTATE\tPLACEMENT\tTIERS\tLOAD_S\tRUN_S\tSUBMITTED")
		for _, j := range l.Jobs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%.3f\t%.3f\t%s\n", j.ID, j.State, placementString(j.Placement), tiersString(j.Placement),
				j.LoadS, j.RunS, j.SubmittedAt.Format(time.RFC3339))
		}
		return tw.Flush()
	}
	return usagef("unknown job subcommand %q; use submit, get, ls, cancel, retry or watch", sub)
}

// readSpecFile reads a job spec, or wraps a bare ComfyUI API-format prompt
// as {"workflow": ...}, so files exported from ComfyUI submit as they are.
func readSpecFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usagef("cannot read %s: %v", path, err)
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, usagef("%s is not a JSON object: %v", path, err)
	}
	for _, k := range []string{"workflow", "worker", "exec"} {
		if _, ok := top[k]; ok {
			return b, nil
		}
	}
	return json.Marshal(map[string]json.RawMessage{"workflow": b})
}

// lsClient checks that args is the "ls" subcommand of noun, parses its flags
// and returns a client and a context bounding the call.
func lsClient(noun string, args []string, stderr io.Writer) (*client.Client, context.Context, context.CancelFunc, error) {
	if len(args) == 0 || args[0] != "ls" {
		return nil, nil, nil, usagef("%s needs a subcommand: ls", noun)
	}
	fs := newFlags(noun+" ls", stderr)
	addr := fs.String("addr", defaultAddr(), "coordinator API URL")
	token := fs.String("token", os.Getenv("HEARTH_TOKEN"), "bearer token (default $HEARTH_TOKEN)")
	if err := parseFlags(fs, args[1:]); err != nil {
		return nil, nil, nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	return newClient(*addr, *token), ctx, cancel, nil
}

func runModelLs(args []string, stdout, stderr io.Writer) error {
	api, ctx, cancel, err := lsClient("model", args, stderr)
	if err != nil {
		return err
	}
	defer cancel()
	models, err := api.Models(ctx)
	if err != nil {
		return err
	}
	hosts, err := api.Hosts(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSIZE\tDIGEST\tHOSTS")
	for _, m := range models {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.Name, humanBytes(m.Size), m.Digest.Short(), holders(m.Digest, hosts))
	}
	return tw.Flush()
}

// holders lists which hosts hold a digest and in which tier.
func holders(d proto.Digest, hosts []proto.HostView) string {
	var out []string
	for _, h := range hosts {
		tier := ""
		for _, b := range h.Cache {
			if b.Digest == d {
				tier = string(b.Tier)
			}
		}
		for _, s := range h.Slots {
			for _, r := range s.Resident {
				if r == d {
					tier = fmt.Sprintf("vram(gpu%d/slot%d)", s.GPU, s.Slot)
				}
			}
		}
		if tier != "" {
			out = append(out, h.ID+":"+tier)
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return strings.Join(out, " ")
}

func runHost(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "drain" {
		return runHostDrain(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "ls" {
		return usagef("host needs a subcommand: ls, or drain ID")
	}
	api, ctx, cancel, err := lsClient("host", args, stderr)
	if err != nil {
		return err
	}
	defer cancel()
	hosts, err := api.Hosts(ctx)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tDEVICES\tGPUS\tSLOTS\tBUSY\tRESIDENT\tCACHED\tLAST_HEARTBEAT\tGOSSIP")
	for _, h := range hosts {
		slots, busy, resident := 0, 0, 0
		for _, g := range h.GPUs {
			slots += g.Slots
		}
		for _, s := range h.Slots {
			if s.Running != "" {
				busy++
			}
			resident += len(s.Resident)
		}
		last := "never"
		if h.LastHeartbeat != nil {
			last = time.Since(*h.LastHeartbeat).Round(100*time.Millisecond).String() + " ago"
		}
		gossipState := cmp.Or(h.Gossip, "-")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", h.ID, h.Status, h.DeviceKind, len(h.GPUs), slots, busy, resident, len(h.Cache), last, gossipState)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, h := range hosts {
		if h.DegradedReason != "" {
			fmt.Fprintf(stdout, "%s is degraded: %s\n", h.ID, h.DegradedReason)
		}
		if h.Drain && h.DrainSince != nil {
			fmt.Fprintf(stdout, "%s: drain set by an operator at %s, %s\n", h.ID, h.DrainSince.Format(time.RFC3339), jobsLeft(&h))
		}
	}
	return nil
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func placementString(p *proto.Placement) string {
	if p == nil {
		return "-"
	}
	return fmt.Sprintf("%s/gpu%d/slot%d", p.Host, p.GPU, p.Slot)
}

func tiersString(p *proto.Placement) string {
	if p == nil || len(p.Models) == 0 {
		return "-"
	}
	parts := make([]string, 0, len(p.Models))
	for _, m := range p.Models {
		name := m.Name
		if i := strings.LastIndexByte(name, '/'); i >= 0 {
			name = name[i+1:]
		}
		parts = append(parts, name+"="+string(m.Tier))
	}
	return strings.Join(parts, " ")
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// runOperator runs "operator raft peers" and "operator raft remove-peer ID".
func runOperator(args []string, stdout, stderr io.Writer) error {
	if len(args) < 2 || args[0] != "raft" || (args[1] != "peers" && args[1] != "remove-peer") {
		return usagef("operator needs: raft peers, or raft remove-peer ID")
	}
	fs := newFlags("operator raft "+args[1], stderr)
	addr := fs.String("addr", defaultAddr(), "coordinator API URL")
	token := fs.String("token", os.Getenv("HEARTH_TOKEN"), "bearer token (default $HEARTH_TOKEN; remove-peer needs the admin scope)")
	if err := parseFlags(fs, args[2:]); err != nil {
		return err
	}
	api := newClient(*addr, *token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var st struct {
		Leader struct {
			ID string `json:"id"`
		} `json:"leader"`
		Voters []struct {
			ID       string `json:"id"`
			Address  string `json:"address"`
			HTTPAddr string `json:"http_addr"`
			Suffrage string `json:"suffrage"`
		} `json:"voters"`
		LastIndex uint64 `json:"last_index"`
	}
	if args[1] == "remove-peer" {
		if fs.NArg() != 1 {
			return usagef("operator raft remove-peer needs one node ID")
		}
		if _, err := api.Do(ctx, "POST", "/v1/operator/raft/remove-peer", map[string]string{"id": fs.Arg(0)}, &st); err != nil {
			return err
		}
	} else if _, err := api.Do(ctx, "GET", "/v1/operator/raft/peers", nil, &st); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tRAFT_ADDRESS\tHTTP_ADDRESS\tSTATE\tSUFFRAGE")
	for _, v := range st.Voters {
		state := "follower"
		if v.ID == st.Leader.ID {
			state = "leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", v.ID, v.Address, cmp.Or(v.HTTPAddr, "-"), state, strings.ToLower(v.Suffrage))
	}
	return tw.Flush()
}
