package coordinator

import (
	"context"
	"fmt"
	"time"

	"github.com/hearth-gpu/hearth/proto"
)

// Group commit. Each submit handler encodes its own SubmitItem and hands it
// to the batcher, which takes whatever has queued up meanwhile (up to
// MaxBatch items or MaxBatchBytes) into one SubmitJobs entry and appends it
// without waiting for the previous entry to commit; up to
// MaxInflightBatches entries are in flight at once, and Raft itself writes
// several appended entries to disk in one fsync. There is no timer: an idle
// leader commits a lone submission at once, a busy one batches because
// submissions pile up while earlier entries commit.
type batcher struct {
	s  *Server
	in chan *submitReq
}

type submitReq struct {
	item  []byte // a JSON-encoded proto.SubmitItem
	start time.Time
	done  chan submitOutcome // buffered: the batcher never blocks on a handler
}

type submitOutcome struct {
	res SubmitResult
	err error
}

func newBatcher(s *Server) *batcher {
	return &batcher{s: s, in: make(chan *submitReq, s.cfg.MaxBatch*4)}
}

// submit queues item for the next batch and waits for its outcome.
func (b *batcher) submit(ctx context.Context, item []byte) (SubmitResult, error) {
	r := &submitReq{item: item, start: time.Now(), done: make(chan submitOutcome, 1)}
	select {
	case b.in <- r:
	case <-ctx.Done():
		return SubmitResult{}, ctx.Err()
	}
	// Once queued, the outcome always comes (Raft's apply timeout bounds
	// it), and the job may be accepted even if this client has gone: wait.
	o := <-r.done
	return o.res, o.err
}

func (b *batcher) run(ctx context.Context) {
	sem := make(chan struct{}, b.s.cfg.MaxInflightBatches)
	for {
		var first *submitReq
		select {
		case <-ctx.Done():
			b.failQueued(fmt.Errorf("%w: coordinator is shutting down", ErrNotLeader))
			return
		case first = <-b.in:
		}
		batch, size := []*submitReq{first}, len(first.item)
	gather:
		for len(batch) < b.s.cfg.MaxBatch && size < b.s.cfg.MaxBatchBytes {
			select {
			case r := <-b.in:
				batch = append(batch, r)
				size += len(r.item)
			default:
				break gather
			}
		}
		sem <- struct{}{}
		items := make([][]byte, len(batch))
		for i, r := range batch {
			items[i] = r.item
		}
		start := time.Now()
		f := b.s.raft.raft.Apply(proto.EncodeSubmitJobs(items), 10*time.Second)
		b.s.metrics.batchSize.Observe(float64(len(batch)))
		go func() {
			defer func() { <-sem }()
			res, err := b.s.applyResult(f, proto.CmdSubmitJobs, start)
			results, _ := res.([]SubmitResult)
			for i, r := range batch {
				switch {
				case err != nil:
					r.done <- submitOutcome{err: err}
				case i >= len(results):
					r.done <- submitOutcome{err: fmt.Errorf("coordinator: batch of %d answered %d results", len(batch), len(results))}
				default:
					r.done <- submitOutcome{res: results[i]}
				}
			}
		}()
	}
}

func (b *batcher) failQueued(err error) {
	for {
		select {
		case r := <-b.in:
			r.done <- submitOutcome{err: err}
		default:
			return
		}
	}
}
