package devcluster

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hearth-gpu/hearth/agent"
	"github.com/hearth-gpu/hearth/proto"
)

// TestPeerBlobServer fetches a model a job brought into the agent's cache
// the way another host would: whole and by range with the pool's token;
// refused without it, for a malformed digest, and for a blob it lacks.
func TestPeerBlobServer(t *testing.T) {
	c := startCluster(t, func(o *Options) {
		o.Agent = func(ac *agent.Config) { ac.HTTPAddr, ac.PeerToken = "127.0.0.1:0", "pool-secret" }
	})
	const name = "loras/pixel_art_xl.safetensors"
	j, _ := waitStates(t, c, mustSubmit(t, c, []byte(`{"worker":{"models":["`+name+`"],"input":{}}}`)))
	if j.State != proto.JobSucceeded {
		t.Fatalf("job ended %s: %s", j.State, j.Error)
	}
	want, err := os.ReadFile(filepath.Join(c.OriginDir, name))
	if err != nil {
		t.Fatal(err)
	}
	d := j.Models[0].Digest
	blobURL := c.Agent.URL() + "/v1/blobs/" + string(d)

	fetch := func(url, token, rng string) (int, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", url, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		req.Header.Set(agent.PeerHeader, "host-2")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, b
	}
	if code, b := fetch(blobURL, "pool-secret", ""); code != 200 || sha256.Sum256(b) != sha256.Sum256(want) {
		t.Fatalf("whole blob: %d, %d bytes; want 200 and the model's %d bytes", code, len(b), len(want))
	}
	if code, b := fetch(blobURL, "pool-secret", "bytes=1000-4999"); code != 206 || string(b) != string(want[1000:5000]) {
		t.Fatalf("range: %d, %d bytes; want 206 and bytes 1000-4999", code, len(b))
	}
	for _, tc := range []struct {
		url, token string
		code       int
		errCode    string
	}{
		{blobURL, "", 403, "not_a_member"},
		{blobURL, "guess", 403, "not_a_member"},
		{c.Agent.URL() + "/v1/blobs/sha256:nothex", "pool-secret", 400, "bad_digest"},
		{c.Agent.URL() + "/v1/blobs/sha256:" + strings.Repeat("0", 64), "pool-secret", 404, "not_cached"},
	} {
		if code, b := fetch(tc.url, tc.token, ""); code != tc.code || !strings.Contains(string(b), `"code":"`+tc.errCode+`"`) {
			t.Errorf("GET %s with token %q: %d %s; want %d %s", tc.url, tc.token, code, b, tc.code, tc.errCode)
		}
	}
	want4 := float64(len(want) + 4000)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var served float64
		for _, line := range strings.Split(get(t, c.Agent.URL()+"/metrics"), "\n") {
			if v, ok := strings.CutPrefix(line, "hearth_peer_bytes_served_total "); ok {
				fmt.Sscan(v, &served)
			}
		}
		if served == want4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hearth_peer_bytes_served_total = %v; want %v", served, want4)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
