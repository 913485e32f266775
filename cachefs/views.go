package cachefs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/hearth-gpu/hearth/proto"
)

// Views materialises catalog names as a directory tree of symbolic links
// into a Store's blobs:
//
//	root/checkpoints/sd_xl_base_1.0.safetensors -> <cache>/blobs/sha256/ab/ab12…
//	root/loras/detail.safetensors               -> <cache>/blobs/sha256/7f/7f3e…
//
// so a worker that looks models up by name (ComfyUI, through the file that
// ExtraModelPathsYAML writes) reads the verified blob without a copy. A name
// maps to exactly one digest: Link replaces a name's link by renaming a new
// link over it, which is atomic, so a reader sees the old blob or the new
// one, never neither. Links are symbolic, not hard, so that evicting a blob
// frees its bytes: a link whose blob was evicted dangles until Prune or the
// next Link of that name, and the agent links a model only once it holds it
// pinned for a job.
type Views struct {
	root  string
	store *Store
	mu    sync.Mutex // serialises changes, so two Links of one name cannot interleave
}

// viewTmpPrefix marks a link being swapped in; List and Prune skip such
// names, and NewViews removes any a crash left behind.
const viewTmpPrefix = ".hearth-link-"

// NewViews opens (creating if needed) the view tree at root over s's blobs.
func NewViews(root string, s *Store) (*Views, error) {
	if root == "" {
		return nil, errors.New("cachefs: views: the view directory is empty: set it")
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("cachefs: views: create %s: %w", root, err)
	}
	v := &Views{root: root, store: s}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(e.Name(), viewTmpPrefix) {
			return os.Remove(p)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("cachefs: views: clear leftover links under %s: %w", root, err)
	}
	return v, nil
}

// Root is the directory the views live in.
func (v *Views) Root() string { return v.root }

// path checks name like a catalog name and returns its place in the tree.
func (v *Views) path(name string) (string, error) {
	if err := proto.ValidateModelName(name); err != nil {
		return "", fmt.Errorf("cachefs: view name %w", err)
	}
	for _, seg := range strings.Split(name, "/") {
		if strings.HasPrefix(seg, viewTmpPrefix) {
			return "", fmt.Errorf("cachefs: view name %q uses the reserved prefix %q", name, viewTmpPrefix)
		}
	}
	return filepath.Join(v.root, filepath.FromSlash(name)), nil
}

// Link points name at d's blob, replacing whatever name pointed at before in
// one atomic rename. d must be cached.
func (v *Views) Link(name string, d proto.Digest) error {
	p, err := v.path(name)
	if err != nil {
		return err
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("cachefs: view %s: %w", name, err)
	}
	if !v.store.Has(d) {
		return fmt.Errorf("cachefs: view %s: fetch %s first: %w", name, d, ErrNotCached)
	}
	target := v.store.blobPath(d)
	v.mu.Lock()
	defer v.mu.Unlock()
	if cur, err := os.Readlink(p); err == nil && cur == target {
		return nil
	}
	if fi, err := os.Lstat(p); err == nil && fi.Mode()&fs.ModeSymlink == 0 {
		return fmt.Errorf("cachefs: view %s: %s is a %s, not a link this cache made; move it away", name, p, fi.Mode().Type())
	}
	dir := filepath.Dir(p)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("cachefs: view %s: create %s: %w", name, dir, err)
	}
	tmp := filepath.Join(dir, viewTmpPrefix+filepath.Base(p))
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("cachefs: view %s: %w", name, err)
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("cachefs: view %s: swap link into place: %w", name, err)
	}
	return nil
}

// Unlink removes name from the views; a name that is not there is no error.
func (v *Views) Unlink(name string) error {
	p, err := v.path(name)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if fi, err := os.Lstat(p); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("cachefs: view %s: not a link this cache made", name)
	}
	if err := os.Remove(p); err != nil {
		return fmt.Errorf("cachefs: view %s: %w", name, err)
	}
	return nil
}

// List returns every name in the views with the digest it points at. Links
// that do not point into the store (made by hand) are left out.
func (v *Views) List() (map[string]proto.Digest, error) {
	out := make(map[string]proto.Digest)
	err := v.walk(func(name, p string, d proto.Digest, ok bool) error {
		if ok {
			out[name] = d
		}
		return nil
	})
	return out, err
}

// Prune removes links whose blob has left the cache, so a worker listing
// its model folders sees only what it can load. It returns the names it
// removed.
func (v *Views) Prune() ([]string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	var gone []string
	err := v.walk(func(name, p string, d proto.Digest, ok bool) error {
		if ok && !v.store.Has(d) {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			gone = append(gone, name)
		}
		return nil
	})
	sort.Strings(gone)
	return gone, err
}

// walk calls fn for every link under the root, with the digest its target
// names when the target is a blob path of this store.
func (v *Views) walk(fn func(name, p string, d proto.Digest, ok bool) error) error {
	prefix := v.store.blobDir + string(filepath.Separator)
	err := filepath.WalkDir(v.root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.Type()&fs.ModeSymlink == 0 || strings.HasPrefix(e.Name(), viewTmpPrefix) {
			return nil
		}
		rel, err := filepath.Rel(v.root, p)
		if err != nil {
			return err
		}
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		hex := filepath.Base(target)
		ok := strings.HasPrefix(target, prefix) && isLowerHex(hex, 64)
		return fn(filepath.ToSlash(rel), p, proto.Digest("sha256:"+hex), ok)
	})
	if err != nil {
		return fmt.Errorf("cachefs: views: walk %s: %w", v.root, err)
	}
	return nil
}

// comfyFolders are the ComfyUI model folders a view tree offers, by the
// key extra_model_paths.yaml gives each.
var comfyFolders = []string{
	"checkpoints", "clip", "clip_vision", "configs", "controlnet", "diffusers", "diffusion_models",
	"embeddings", "gligen", "hypernetworks", "loras", "photomaker", "style_models", "text_encoders",
	"unet", "upscale_models", "vae", "vae_approx",
}

// ExtraModelPathsYAML returns an extra_model_paths.yaml that points every
// ComfyUI model folder at its directory in the views, under a section named
// "hearth". ComfyUI reads it with --extra-model-paths-config.
func (v *Views) ExtraModelPathsYAML() []byte {
	var b strings.Builder
	b.WriteString("# Written by hearth: model folders are links into the host's verified blob cache.\n")
	fmt.Fprintf(&b, "hearth:\n  base_path: %q\n", v.root)
	for _, f := range comfyFolders {
		fmt.Fprintf(&b, "  %s: %s/\n", f, f)
	}
	return []byte(b.String())
}
