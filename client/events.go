package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

// Event is one Server-Sent Event from a coordinator's event stream.
type Event struct {
	ID   uint64 // 0 when the event carried no id
	Type string
	Data []byte
}

// EventEnd is the type of the last event of a job's stream: its data is
// the finished job.
const EventEnd = "end"

// WatchJob follows a job's event stream from after (0: from the start),
// calling fn for each event, until the job ends (after the EventEnd event),
// fn returns an error, or ctx ends. Streams that break are resumed from
// the last event id, on the next node if the client knows several.
func (c *Client) WatchJob(ctx context.Context, id string, after uint64, fn func(Event) error) error {
	return c.watch(ctx, "/v1/jobs/"+url.PathEscape(id)+"/events", after, fn)
}

// WatchAll follows the cluster-wide event stream until fn returns an error
// or ctx ends.
func (c *Client) WatchAll(ctx context.Context, after uint64, fn func(Event) error) error {
	return c.watch(ctx, "/v1/events", after, fn)
}

func (c *Client) watch(ctx context.Context, path string, after uint64, fn func(Event) error) error {
	for failures := 0; ; {
		done, err := c.watchOnce(ctx, path, &after, fn)
		if done || ctx.Err() != nil {
			return err
		}
		var ae *Error
		if errors.As(err, &ae) && ae.Status < 500 {
			return err
		}
		if failures++; failures > 8 {
			return fmt.Errorf("client: event stream %s: %w", path, err)
		}
	}
}

// watchOnce reads one connection's worth of events. done is true when the
// stream ended for good (the job ended, or fn failed).
func (c *Client) watchOnce(ctx context.Context, path string, after *uint64, fn func(Event) error) (done bool, err error) {
	cur := c.cur.Load()
	base := c.bases[int(cur)%len(c.bases)]
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return true, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if *after > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(*after, 10))
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		c.failover(cur)
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		return false, decodeError(resp.StatusCode, data)
	}
	r := NewSSEReader(resp.Body)
	for {
		ev, err := r.Next()
		if err != nil {
			return false, err
		}
		if ev.ID > 0 {
			*after = ev.ID
		}
		if err := fn(ev); err != nil {
			return true, err
		}
		if ev.Type == EventEnd {
			return true, nil
		}
	}
}
