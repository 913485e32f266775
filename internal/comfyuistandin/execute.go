package comfyuistandin

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// loaderInputs maps ComfyUI's core loader nodes to the input naming a
// model file and the folder it is looked up in (ComfyUI's folder_paths keys;
// "clip" and "unet" are the older names of text_encoders and diffusion_models).
var loaderInputs = map[string][][2]string{
	"CheckpointLoaderSimple":    {{"ckpt_name", "checkpoints"}},
	"CheckpointLoader":          {{"ckpt_name", "checkpoints"}},
	"ImageOnlyCheckpointLoader": {{"ckpt_name", "checkpoints"}},
	"unCLIPCheckpointLoader":    {{"ckpt_name", "checkpoints"}},
	"LoraLoader":                {{"lora_name", "loras"}},
	"LoraLoaderModelOnly":       {{"lora_name", "loras"}},
	"VAELoader":                 {{"vae_name", "vae"}},
	"UNETLoader":                {{"unet_name", "diffusion_models"}},
	"CLIPLoader":                {{"clip_name", "text_encoders"}},
	"DualCLIPLoader":            {{"clip_name1", "text_encoders"}, {"clip_name2", "text_encoders"}},
	"CLIPVisionLoader":          {{"clip_name", "clip_vision"}},
	"ControlNetLoader":          {{"control_net_name", "controlnet"}},
	"DiffControlNetLoader":      {{"control_net_name", "controlnet"}},
	"UpscaleModelLoader":        {{"model_name", "upscale_models"}},
	"StyleModelLoader":          {{"style_model_name", "style_models"}},
}

// builtinVAEs are VAELoader values that name no file.
var builtinVAEs = []string{"taesd", "taesdxl", "taesd3", "taef1", "pixel_space"}

// outputNodes are the node types that produce files, with the key their
// files are listed under in "executed" and the history, the extension and
// the type ("output" or "temp").
var outputNodes = map[string]struct{ key, ext, typ string }{
	"SaveImage":        {"images", ".png", "output"},
	"PreviewImage":     {"images", ".png", "temp"},
	"SaveAnimatedWEBP": {"images", ".webp", "output"},
	"SaveVideo":        {"videos", ".mp4", "output"},
	"VHS_VideoCombine": {"gifs", ".mp4", "output"},
	"SaveAudio":        {"audio", ".wav", "output"},
}

type node struct {
	ClassType string                     `json:"class_type"`
	Inputs    map[string]json.RawMessage `json:"inputs"`
}

type prompt struct {
	id       string
	number   int
	clientID string
	raw      json.RawMessage
	nodes    map[string]node
	order    []string // execution order: loaders, then the rest, by id

	mu          sync.Mutex
	interrupted bool
}

func (p *prompt) interrupt() {
	p.mu.Lock()
	p.interrupted = true
	p.mu.Unlock()
}

func (p *prompt) isInterrupted() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.interrupted
}

func (s *Server) handlePrompt(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Prompt   json.RawMessage `json:"prompt"`
		ClientID string          `json:"client_id"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<20)).Decode(&body); err != nil {
		writeJSON(w, http.StatusBadRequest, promptError("invalid_prompt", "Invalid prompt: "+err.Error(), nil))
		return
	}
	var nodes map[string]node
	if err := json.Unmarshal(body.Prompt, &nodes); err != nil || len(nodes) == 0 {
		writeJSON(w, http.StatusBadRequest, promptError("invalid_prompt", "Invalid prompt: not an API-format prompt", nil))
		return
	}
	nodeErrors := map[string]any{}
	hasOutput := false
	for id, n := range nodes {
		if n.ClassType == "" {
			writeJSON(w, http.StatusBadRequest, promptError("invalid_prompt", fmt.Sprintf("Cannot execute because node %s has no class_type property.", id), nil))
			return
		}
		if _, ok := outputNodes[n.ClassType]; ok {
			hasOutput = true
		}
		for _, li := range loaderInputs[n.ClassType] {
			name, ok := stringInput(n, li[0])
			if !ok || (n.ClassType == "VAELoader" && slices.Contains(builtinVAEs, name)) {
				continue
			}
			if _, err := s.findModel(li[1], name); err != nil {
				nodeErrors[id] = map[string]any{
					"errors": []any{map[string]any{"type": "value_not_in_list", "message": "Value not in list",
						"details": fmt.Sprintf("%s: '%s' not in %s", li[0], name, li[1]), "extra_info": map[string]any{"input_name": li[0]}}},
					"dependent_outputs": []string{}, "class_type": n.ClassType,
				}
			}
		}
	}
	if !hasOutput {
		writeJSON(w, http.StatusBadRequest, promptError("prompt_no_outputs", "Prompt has no outputs", nil))
		return
	}
	if len(nodeErrors) > 0 {
		writeJSON(w, http.StatusBadRequest, promptError("prompt_outputs_failed_validation", "Prompt outputs failed validation", nodeErrors))
		return
	}
	p := &prompt{clientID: body.ClientID, raw: body.Prompt, nodes: nodes}
	for id := range nodes {
		p.order = append(p.order, id)
	}
	slices.SortFunc(p.order, func(a, b string) int {
		_, la := loaderInputs[nodes[a].ClassType]
		_, lb := loaderInputs[nodes[b].ClassType]
		if la != lb {
			if la {
				return -1
			}
			return 1
		}
		return compareIDs(a, b)
	})
	s.mu.Lock()
	s.number++
	p.number = s.number
	sum := sha256.Sum256(fmt.Appendf(nil, "%d-%d", time.Now().UnixNano(), p.number))
	h := hex.EncodeToString(sum[:16])
	p.id = h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
	s.queue = append(s.queue, p)
	s.mu.Unlock()
	s.poke()
	s.broadcastStatus()
	writeJSON(w, http.StatusOK, map[string]any{"prompt_id": p.id, "number": p.number, "node_errors": map[string]any{}})
}

func promptError(typ, msg string, nodeErrors map[string]any) map[string]any {
	if nodeErrors == nil {
		nodeErrors = map[string]any{}
	}
	return map[string]any{"error": map[string]any{"type": typ, "message": msg, "details": "", "extra_info": map[string]any{}}, "node_errors": nodeErrors}
}

func compareIDs(a, b string) int {
	x, errA := strconv.Atoi(a)
	y, errB := strconv.Atoi(b)
	if errA == nil && errB == nil {
		return x - y
	}
	return strings.Compare(a, b)
}

func stringInput(n node, key string) (string, bool) {
	var v string
	raw, ok := n.Inputs[key]
	if !ok || json.Unmarshal(raw, &v) != nil {
		return "", false
	}
	return v, true
}

// findModel resolves a file name in a model folder, as folder_paths does.
func (s *Server) findModel(folder, name string) (string, error) {
	rel := filepath.FromSlash(name)
	if !filepath.IsLocal(rel) {
		return "", fmt.Errorf("%q is not a relative name", name)
	}
	keys := []string{folder}
	switch folder {
	case "text_encoders":
		keys = append(keys, "clip")
	case "diffusion_models":
		keys = append(keys, "unet")
	}
	for _, k := range keys {
		for _, dir := range s.folders[k] {
			p := filepath.Join(dir, rel)
			if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%s not found in folder %s", name, folder)
}

// executor runs queued prompts one at a time, and frees models between
// prompts when asked to.
func (s *Server) executor() {
	for {
		s.mu.Lock()
		if s.freeAsked {
			s.freeAsked = false
			n := len(s.loaded)
			clear(s.loaded)
			clear(s.nodeCache)
			s.log.Info("comfyuistandin: freed models", "models", n)
		}
		var p *prompt
		if len(s.queue) > 0 {
			p, s.queue = s.queue[0], s.queue[1:]
			s.running = p
		}
		s.mu.Unlock()
		if p == nil {
			select {
			case <-s.ctx.Done():
				return
			case <-s.wake:
				continue
			}
		}
		s.execute(p)
		s.mu.Lock()
		s.running = nil
		s.mu.Unlock()
		s.broadcastStatus()
	}
}

var errInterrupted = errors.New("interrupted")

// nodeFailure is an exception a node raised.
type nodeFailure struct {
	node, classType, typ, msg string
}

func (e *nodeFailure) Error() string { return e.typ + ": " + e.msg }

func (s *Server) execute(p *prompt) {
	now := func() int64 { return time.Now().UnixMilli() }
	var messages []any
	event := func(typ string, data map[string]any) {
		data["prompt_id"] = p.id
		s.send(p.clientID, typ, data)
		if typ == "execution_start" || typ == "execution_cached" || typ == "execution_success" ||
			typ == "execution_error" || typ == "execution_interrupted" {
			messages = append(messages, []any{typ, data})
		}
	}
	event("execution_start", map[string]any{"timestamp": now()})

	// A loader whose input is unchanged and whose model is still loaded is
	// served from the cache, as ComfyUI's execution cache serves it.
	var cached []string
	s.mu.Lock()
	for _, id := range p.order {
		n := p.nodes[id]
		if _, ok := loaderInputs[n.ClassType]; ok {
			if _, hit := s.nodeCache[nodeKey(n)]; hit {
				cached = append(cached, id)
			}
		}
	}
	s.mu.Unlock()
	event("execution_cached", map[string]any{"nodes": cached, "timestamp": now()})

	outputs := map[string]any{}
	var executed []string
	var digests []string
	var err error
	for _, id := range p.order {
		n := p.nodes[id]
		if p.isInterrupted() || s.ctx.Err() != nil {
			err = errInterrupted
			event("execution_interrupted", map[string]any{"node_id": id, "node_type": n.ClassType, "executed": executed, "timestamp": now()})
			break
		}
		if slices.Contains(cached, id) {
			s.mu.Lock()
			digests = append(digests, s.nodeCache[nodeKey(n)])
			s.mu.Unlock()
			executed = append(executed, id)
			continue
		}
		event("executing", map[string]any{"node": id, "display_node": id})
		out, d, nerr := s.runNode(p, id, n, func(v, max int) {
			event("progress", map[string]any{"value": v, "max": max, "node": id})
		}, digests)
		digests = append(digests, d...)
		if errors.Is(nerr, errInterrupted) {
			err = nerr
			event("execution_interrupted", map[string]any{"node_id": id, "node_type": n.ClassType, "executed": executed, "timestamp": now()})
			break
		}
		var nf *nodeFailure
		if errors.As(nerr, &nf) {
			err = nerr
			event("execution_error", map[string]any{"node_id": id, "node_type": n.ClassType, "executed": executed,
				"exception_message": nf.msg, "exception_type": nf.typ, "traceback": []string{}, "current_inputs": map[string]any{},
				"current_outputs": map[string]any{}, "timestamp": now()})
			break
		}
		executed = append(executed, id)
		if out != nil {
			outputs[id] = out
			event("executed", map[string]any{"node": id, "display_node": id, "output": out})
		}
	}
	status := map[string]any{"status_str": "success", "completed": true}
	if err != nil {
		status = map[string]any{"status_str": "error", "completed": false}
	} else {
		event("execution_success", map[string]any{"timestamp": now()})
	}
	status["messages"] = messages
	outIDs := make([]string, 0, len(outputs))
	for id := range outputs {
		outIDs = append(outIDs, id)
	}
	entry, merr := json.Marshal(map[string]any{
		"prompt":  []any{p.number, p.id, p.raw, map[string]any{"client_id": p.clientID}, outIDs},
		"outputs": outputs, "status": status, "meta": map[string]any{},
	})
	if merr != nil {
		s.log.Error("comfyuistandin: encode history", "err", merr)
		return
	}
	s.mu.Lock()
	s.history[p.id] = entry
	s.mu.Unlock()
	// As ComfyUI's prompt worker does: the history entry is stored before
	// the final "executing" with node null goes out.
	if err == nil {
		event("executing", map[string]any{"node": nil, "display_node": nil})
	}
	s.log.Info("comfyuistandin: prompt done", "prompt_id", p.id, "status", status["status_str"], "outputs", len(outputs))
}

func nodeKey(n node) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// runNode executes one node: loaders load, samplers step, outputs write.
// It returns the node's UI output (nil if none) and the digests it loaded.
func (s *Server) runNode(p *prompt, id string, n node, progress func(v, max int), digests []string) (map[string]any, []string, error) {
	switch {
	case n.ClassType == "StandinCrash":
		// With a "once" path, only the first execution crashes: it leaves
		// the file behind, and later ones pass, as a retried job would.
		if once, ok := stringInput(n, "once"); ok && once != "" {
			f, err := os.OpenFile(once, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
			if err != nil {
				return nil, nil, nil
			}
			f.Close()
		}
		s.log.Warn("comfyuistandin: StandinCrash node: exiting")
		s.cfg.Exit(70)
		return nil, nil, &nodeFailure{node: id, classType: n.ClassType, typ: "SystemExit", msg: "crashed"}
	case n.ClassType == "StandinFail":
		msg, _ := stringInput(n, "message")
		return nil, nil, &nodeFailure{node: id, classType: n.ClassType, typ: "RuntimeError", msg: "StandinFail: " + msg}
	}
	if lis, ok := loaderInputs[n.ClassType]; ok {
		var got []string
		for _, li := range lis {
			name, ok := stringInput(n, li[0])
			if !ok || (n.ClassType == "VAELoader" && slices.Contains(builtinVAEs, name)) {
				continue
			}
			d, err := s.load(li[1], name)
			if err != nil {
				return nil, got, &nodeFailure{node: id, classType: n.ClassType, typ: "FileNotFoundError", msg: err.Error()}
			}
			got = append(got, d)
		}
		if len(got) > 0 {
			s.mu.Lock()
			s.nodeCache[nodeKey(n)] = got[0]
			s.mu.Unlock()
		}
		return nil, got, nil
	}
	if strings.HasSuffix(n.ClassType, "Sampler") || strings.HasSuffix(n.ClassType, "SamplerAdvanced") {
		steps := s.cfg.Steps
		var want int
		if raw, ok := n.Inputs["steps"]; ok && json.Unmarshal(raw, &want) == nil && want > 0 {
			steps = min(want, s.cfg.Steps)
		}
		for i := 1; i <= steps; i++ {
			if s.cfg.StepDelay > 0 {
				select {
				case <-time.After(s.cfg.StepDelay):
				case <-s.ctx.Done():
					return nil, nil, errInterrupted
				}
			}
			if p.isInterrupted() {
				return nil, nil, errInterrupted
			}
			progress(i, steps)
		}
		return nil, nil, nil
	}
	if on, ok := outputNodes[n.ClassType]; ok {
		prefix, _ := stringInput(n, "filename_prefix")
		if prefix == "" {
			prefix = "ComfyUI"
		}
		if on.typ == "temp" {
			prefix = "ComfyUI_temp"
		}
		sub, base := filepath.Split(filepath.FromSlash(prefix))
		dir := s.cfg.OutputDir
		if on.typ == "temp" {
			dir = s.tempDir
		}
		if !filepath.IsLocal(filepath.Join(sub, base)) {
			return nil, nil, &nodeFailure{node: id, classType: n.ClassType, typ: "ValueError", msg: "filename_prefix leaves the output directory"}
		}
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, nil, &nodeFailure{node: id, classType: n.ClassType, typ: "OSError", msg: err.Error()}
		}
		name, err := nextName(filepath.Join(dir, sub), base, on.ext)
		if err != nil {
			return nil, nil, &nodeFailure{node: id, classType: n.ClassType, typ: "OSError", msg: err.Error()}
		}
		seed := sha256.New()
		seed.Write(p.raw)
		seed.Write([]byte(id))
		for _, d := range digests {
			seed.Write([]byte(d))
		}
		var sum [32]byte
		seed.Sum(sum[:0])
		data, err := fileBytes(on.ext, sum)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, sub, name), data, 0o644)
		}
		if err != nil {
			return nil, nil, &nodeFailure{node: id, classType: n.ClassType, typ: "OSError", msg: err.Error()}
		}
		item := map[string]any{"filename": name, "subfolder": filepath.ToSlash(filepath.Clean(sub)), "type": on.typ}
		if item["subfolder"] == "." {
			item["subfolder"] = ""
		}
		out := map[string]any{on.key: []any{item}}
		if on.key == "gifs" || on.key == "videos" {
			item["format"] = "video/h264-mp4"
		}
		if n.ClassType == "SaveVideo" || n.ClassType == "SaveAnimatedWEBP" {
			out["animated"] = []bool{true}
		}
		return out, nil, nil
	}
	return nil, nil, nil // any other node passes through
}

// load opens and reads a model file whole, hashing it, unless it is
// already loaded, and returns its digest.
func (s *Server) load(folder, name string) (string, error) {
	key := folder + "/" + name
	s.mu.Lock()
	m, ok := s.loaded[key]
	s.mu.Unlock()
	if ok {
		return m.Digest, nil
	}
	path, err := s.findModel(folder, name)
	if err != nil {
		return "", err
	}
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	m = loadedModel{Path: path, Digest: "sha256:" + hex.EncodeToString(h.Sum(nil)), Size: n}
	s.mu.Lock()
	s.loaded[key] = m
	s.mu.Unlock()
	s.log.Info("comfyuistandin: loaded model", "model", key, "bytes", n)
	return m.Digest, nil
}

// nextName returns prefix_NNNNN_.ext with the first counter not yet used,
// as ComfyUI's save nodes number their files.
func nextName(dir, prefix, ext string) (string, error) {
	for i := 1; i < 1e6; i++ {
		name := fmt.Sprintf("%s_%05d_%s", prefix, i, ext)
		if _, err := os.Lstat(filepath.Join(dir, name)); errors.Is(err, os.ErrNotExist) {
			return name, nil
		}
	}
	return "", fmt.Errorf("no free file name for %s in %s", prefix, dir)
}

// fileBytes makes a small real file of the kind ext names from sum.
func fileBytes(ext string, sum [32]byte) ([]byte, error) {
	var buf bytes.Buffer
	switch ext {
	case ".png", ".webp":
		img := image.NewNRGBA(image.Rect(0, 0, 64, 64))
		for y := range 64 {
			for x := range 64 {
				c := sum[(x/8+y/8*8)%32]
				img.SetNRGBA(x, y, color.NRGBA{R: sum[0] ^ c, G: sum[1] ^ byte(x*4), B: sum[2] ^ byte(y*4), A: 255})
			}
		}
		if err := png.Encode(&buf, img); err != nil {
			return nil, err
		}
	case ".mp4":
		// An ISO base media file: an ftyp box, then an mdat box of payload.
		box := func(typ string, payload []byte) {
			_ = binary.Write(&buf, binary.BigEndian, uint32(8+len(payload)))
			buf.WriteString(typ)
			buf.Write(payload)
		}
		box("ftyp", []byte("isom\x00\x00\x02\x00isomiso2avc1mp41"))
		box("mdat", bytes.Repeat(sum[:], 32))
	case ".wav":
		// 0.1 s of 16-bit mono PCM at 8 kHz, a tone pitched by sum.
		const rate, n = 8000, 800
		pcm := make([]byte, 2*n)
		freq := 200 + float64(sum[0])*4
		for i := range n {
			v := int16(8000 * math.Sin(2*math.Pi*freq*float64(i)/rate))
			binary.LittleEndian.PutUint16(pcm[2*i:], uint16(v))
		}
		buf.WriteString("RIFF")
		_ = binary.Write(&buf, binary.LittleEndian, uint32(36+len(pcm)))
		buf.WriteString("WAVEfmt ")
		for _, v := range []any{uint32(16), uint16(1), uint16(1), uint32(rate), uint32(rate * 2), uint16(2), uint16(16)} {
			_ = binary.Write(&buf, binary.LittleEndian, v)
		}
		buf.WriteString("data")
		_ = binary.Write(&buf, binary.LittleEndian, uint32(len(pcm)))
		buf.Write(pcm)
	default:
		return nil, fmt.Errorf("no writer for %s", ext)
	}
	return buf.Bytes(), nil
}
