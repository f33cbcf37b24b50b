package runtime

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containerd/containerd"
	"github.com/containerd/containerd/errdefs"
	"github.com/containerd/containerd/images"
	"github.com/containerd/containerd/remotes"
	"github.com/containerd/containerd/remotes/docker"
)

// errPulling means the image is on its way: not a failure worth a warning.
var errPulling = errors.New("being pulled")

// puller pulls images in the background, one goroutine per image, with
// backoff on failure, so a missing image or a registry that is down delays
// only the services that use it.
type puller struct {
	client *containerd.Client
	cfg    Config
	log    *slog.Logger
	onDone func()

	mu    sync.Mutex
	state map[string]*pullState
	kick  chan struct{}
}

type pullState struct {
	ready    bool
	pulling  bool
	failures int
	err      error
	next     time.Time
}

func newPuller(c *containerd.Client, cfg Config, log *slog.Logger, onDone func()) *puller {
	return &puller{client: c, cfg: cfg, log: log, onDone: onDone, state: map[string]*pullState{}, kick: make(chan struct{}, 1)}
}

// want registers an image the desired state needs.
func (p *puller) want(ref string) {
	p.mu.Lock()
	if _, ok := p.state[ref]; !ok {
		p.state[ref] = &pullState{}
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// problem says why an image is not ready, "" when it is or is pulling
// for the first time.
func (p *puller) problem(ref string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st := p.state[ref]; st != nil && st.err != nil && !st.ready {
		return fmt.Sprintf("pull %s: %v (attempt %d, next at %s)", ref, st.err, st.failures, st.next.Format(time.TimeOnly))
	}
	return ""
}

// get returns a local image, or an error that says it is being pulled.
func (p *puller) get(ctx context.Context, ref string) (containerd.Image, error) {
	img, err := p.client.GetImage(ctx, normalize(ref))
	if err == nil {
		return img, nil
	}
	if !errdefs.IsNotFound(err) {
		return nil, fmt.Errorf("image %s: %w", ref, err)
	}
	p.want(ref)
	if why := p.problem(ref); why != "" {
		return nil, fmt.Errorf("%s", why)
	}
	return nil, fmt.Errorf("image %s: %w", ref, errPulling)
}

func (p *puller) run(ctx context.Context) {
	ctx = contextWithNamespace(ctx, p.cfg.Namespace)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		now := p.cfg.Now()
		p.mu.Lock()
		for ref, st := range p.state {
			if st.ready || st.pulling || now.Before(st.next) {
				continue
			}
			st.pulling = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := p.pull(ctx, ref)
				p.mu.Lock()
				st.pulling = false
				if err == nil {
					st.ready, st.err, st.failures = true, nil, 0
				} else if ctx.Err() == nil {
					st.failures++
					st.err = err
					delay := min(time.Second<<min(st.failures-1, 6), time.Minute)
					st.next = p.cfg.Now().Add(delay)
					p.log.Warn("pull failed", "image", ref, "err", err, "attempt", st.failures, "retry_in", delay)
				}
				p.mu.Unlock()
				p.onDone()
			}()
		}
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-p.kick:
		case <-tick.C:
		}
	}
}

func (p *puller) pull(ctx context.Context, ref string) error {
	name := normalize(ref)
	if _, err := p.client.GetImage(ctx, name); err == nil {
		return nil
	}
	start := time.Now()
	p.log.Info("pulling image", "image", ref)
	// Long pulls report progress: the bytes of the downloads in flight in
	// this namespace's content store, every few seconds.
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(3 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				var got, total int64
				if sts, err := p.client.ContentStore().ListStatuses(ctx); err == nil {
					for _, st := range sts {
						got, total = got+st.Offset, total+st.Total
					}
				}
				p.log.Info("still pulling image", "image", ref, "elapsed", time.Since(start).Round(time.Second), "downloading_bytes", got, "of_bytes", total)
			}
		}
	}()
	img, err := p.client.Pull(ctx, name, containerd.WithPullUnpack, containerd.WithResolver(p.resolver()))
	if err != nil {
		return err
	}
	size, _ := img.Size(ctx)
	p.log.Info("pulled image", "image", ref, "bytes", size, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// resolver talks plain HTTP to the configured insecure registries (and to
// loopback, as containerd does) and uses Docker config.json credentials.
func (p *puller) resolver() remotes.Resolver {
	insecure := map[string]bool{}
	for _, h := range p.cfg.InsecureRegistries {
		insecure[h] = true
	}
	match := func(host string) (bool, error) {
		if insecure[host] {
			return true, nil
		}
		return docker.MatchLocalhost(host)
	}
	creds := loadDockerConfig(p.cfg.DockerConfig)
	auth := docker.NewDockerAuthorizer(docker.WithAuthCreds(func(host string) (string, string, error) {
		c := creds[host]
		return c[0], c[1], nil
	}))
	return docker.NewResolver(docker.ResolverOptions{
		Hosts: docker.ConfigureDefaultRegistries(docker.WithPlainHTTP(match), docker.WithAuthorizer(auth)),
	})
}

// loadDockerConfig reads {"auths": {"host": {"auth": base64(user:pass)}}}.
func loadDockerConfig(path string) map[string][2]string {
	if path == "" {
		home, _ := os.UserHomeDir()
		path = filepath.Join(home, ".docker", "config.json")
	}
	out := map[string][2]string{}
	data, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	var cfg struct {
		Auths map[string]struct {
			Auth     string `json:"auth"`
			Username string `json:"username"`
			Password string `json:"password"`
		} `json:"auths"`
	}
	if json.Unmarshal(data, &cfg) != nil {
		return out
	}
	for host, a := range cfg.Auths {
		host = strings.TrimPrefix(strings.TrimPrefix(host, "https://"), "http://")
		host = strings.TrimSuffix(strings.Split(host, "/")[0], "/")
		user, pass := a.Username, a.Password
		if dec, err := base64.StdEncoding.DecodeString(a.Auth); err == nil {
			if u, pw, ok := strings.Cut(string(dec), ":"); ok {
				user, pass = u, pw
			}
		}
		if host == "index.docker.io" {
			host = "registry-1.docker.io"
		}
		out[host] = [2]string{user, pass}
	}
	return out
}

// normalize makes "nginx" into "docker.io/library/nginx:latest", the name
// containerd stores images under.
func normalize(ref string) string {
	name := ref
	if i := strings.IndexByte(name, '/'); i < 0 || !strings.ContainsAny(name[:i], ".:") && name[:i] != "localhost" {
		if i < 0 {
			name = "library/" + name
		}
		name = "docker.io/" + name
	}
	last := name[strings.LastIndexByte(name, '/')+1:]
	if !strings.ContainsAny(last, ":@") {
		name += ":latest"
	}
	return name
}

// collectImages deletes the images of this namespace that no container
// uses and no desired slot names, beyond the KeepUnusedImages most
// recently updated. Containerd's garbage collector then frees their
// content and snapshots.
func (r *Runtime) collectImages(ctx context.Context, desired []Desired) error {
	keep := r.cfg.KeepUnusedImages
	if keep == 0 {
		keep = 3
	}
	inUse := map[string]bool{}
	for _, d := range desired {
		inUse[normalize(d.Service.Image)] = true
	}
	cs, err := r.client.Containers(ctx)
	if err != nil {
		return fmt.Errorf("list containers: %w", err)
	}
	for _, c := range cs {
		if info, err := c.Info(ctx); err == nil {
			inUse[info.Image] = true
		}
	}
	imgs, err := r.client.ImageService().List(ctx)
	if err != nil {
		return fmt.Errorf("list images: %w", err)
	}
	var unused []images.Image
	for _, img := range imgs {
		if !inUse[img.Name] {
			unused = append(unused, img)
		}
	}
	sort.Slice(unused, func(i, j int) bool { return unused[i].UpdatedAt.After(unused[j].UpdatedAt) })
	for i, img := range unused {
		if i < keep {
			continue
		}
		if err := r.client.ImageService().Delete(ctx, img.Name); err != nil && !errdefs.IsNotFound(err) {
			return fmt.Errorf("delete image %s: %w", img.Name, err)
		}
		r.log.Info("deleted unused image", "image", img.Name)
	}
	return nil
}
