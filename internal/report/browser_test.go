package report

import (
	"context"
	"encoding/json"
	"html"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// pageState is what page.js records in #report-state.
type pageState struct {
	Ready    bool     `json:"ready"`
	Errors   []string `json:"errors"`
	Requests int      `json:"requests"`
	Panels   []struct {
		ID     string `json:"id"`
		Bands  int    `json:"bands"` // shaded phases drawn
		Series []struct {
			Label  string `json:"label"`
			Shown  bool   `json:"shown"`
			Points int    `json:"points"`
			Pixels int    `json:"pixels"`
		} `json:"series"`
	} `json:"panels"`
}

// chromium returns the browser, failing as root (CI installs it with
// scripts/install-deps.sh) and skipping only for a user without it.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Geteuid() == 0 {
		t.Fatal("chromium not found: run scripts/install-deps.sh (the report's browser test must run in CI)")
	}
	t.Skip("not root and no chromium: skipping the report's browser test")
	return ""
}

// artifactsDir is where the screenshots go: $SE_TEST_ARTIFACTS, else
// artifacts/ at the repository's root (CI keeps it).
func artifactsDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("SE_TEST_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// openInChromium loads page from file:// in headless Chromium with the
// network cut off (a proxy that refuses, every name unresolvable), writes a
// screenshot and returns the page's recorded state.
func openInChromium(t *testing.T, page, screenshot string) pageState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, chromium(t), "--headless", "--no-sandbox", "--disable-gpu",
		"--hide-scrollbars", "--no-first-run", "--disable-dev-shm-usage", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--disable-default-apps",
		"--user-data-dir="+t.TempDir(),
		"--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
		"--virtual-time-budget=5000", "--window-size=1280,1800",
		"--screenshot="+screenshot, "--dump-dom", "file://"+page)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	dom, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium: %v\n%s", err, stderr.String())
	}
	const open = `<pre id="report-state" hidden="">`
	i := strings.Index(string(dom), open)
	j := strings.Index(string(dom[max(i, 0):]), "</pre>")
	if i < 0 || j < 0 {
		t.Fatalf("no #report-state in the DOM:\n%.2000s", dom)
	}
	raw := html.UnescapeString(string(dom[i+len(open) : i+j]))
	var st pageState
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		t.Fatalf("#report-state %q: %v", raw, err)
	}
	return st
}

func TestReportInChromium(t *testing.T) {
	dir := t.TempDir()
	big := func(name string, tickMs int64, cpu float64) string {
		// 20,000 ticks: more than MaxPoints, so the charts are decimated.
		return synthetic(t, dir, name, "standalone", 1_704_067_200_000, 1_704_067_201_000,
			1_704_067_200_000+19_000*tickMs, 1_704_067_200_000+19_999*tickMs, tickMs, cpu)
	}
	cases := []struct {
		name      string
		files     []string
		decimated bool
		bands     int // shaded waiting phases on each chart
	}{
		{"example", []string{"../../example/statexec_metrics.txt"}, false, -1},
		{"example-sync-pair", []string{"../../example/statexec_metrics.txt", "../../example/statexec_metrics_server.txt"}, false, -1},
		// Each run waits 1 s before its command and 99.9 s after it.
		{"ab-decimated", []string{big("baseline.txt", 100, 0.05), big("candidate.txt", 100, 0.08)}, true, 4},
	}
	out := artifactsDir(t)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			runs, err := Load(c.files)
			if err != nil {
				t.Fatal(err)
			}
			rep := Build(runs, MaxPoints)
			for _, r := range runs {
				for _, s := range r.file.Series {
					if !r.drawn[s] {
						t.Errorf("%s: series %s%v on no panel", r.Name, s.Name, s.Labels)
					}
				}
			}
			page := filepath.Join(dir, c.name+".html")
			if err := rep.WriteFile(page); err != nil {
				t.Fatal(err)
			}
			shot, err := filepath.Abs(filepath.Join(out, "report-"+c.name+".png"))
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(shot)
			st := openInChromium(t, page, shot)
			if !st.Ready || len(st.Errors) > 0 {
				t.Fatalf("page not ready or errors: ready=%v errors=%q", st.Ready, st.Errors)
			}
			if st.Requests != 0 {
				t.Fatalf("the page made %d requests; it must make none", st.Requests)
			}
			if len(st.Panels) != len(rep.Panels) {
				t.Fatalf("%d panels drawn, report has %d", len(st.Panels), len(rep.Panels))
			}
			decimated := false
			for i, p := range st.Panels {
				want := rep.Panels[i]
				if p.ID != want.ID || len(p.Series) != len(want.Series) {
					t.Fatalf("panel %d: %s with %d series, want %s with %d", i, p.ID, len(p.Series), want.ID, len(want.Series))
				}
				if c.bands >= 0 && p.Bands != c.bands {
					t.Errorf("%s: %d shaded phases, want %d", p.ID, p.Bands, c.bands)
				}
				for k, s := range p.Series {
					ws := want.Series[k]
					decimated = decimated || ws.Decimated
					nonNull := 0
					for _, v := range ws.Values {
						if v == v { // not NaN
							nonNull++
						}
					}
					if s.Points != nonNull || s.Shown != ws.Show {
						t.Errorf("%s / %s: page has %d points shown=%v, data %d shown=%v", p.ID, s.Label, s.Points, s.Shown, nonNull, ws.Show)
					}
					if s.Shown && s.Points > 0 && s.Pixels == 0 {
						t.Errorf("%s / %s: %d points but nothing drawn on the canvas", p.ID, s.Label, s.Points)
					}
				}
			}
			if decimated != c.decimated {
				t.Errorf("decimated=%v, want %v", decimated, c.decimated)
			}
			checkScreenshot(t, shot)
		})
	}
}

// checkScreenshot checks that the PNG exists and is not blank.
func checkScreenshot(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot %s: %v", path, err)
	}
	b := img.Bounds()
	ink := 0
	for y := b.Min.Y; y < b.Max.Y; y += 2 {
		for x := b.Min.X; x < b.Max.X; x += 2 {
			if r, g, bl, _ := img.At(x, y).RGBA(); r < 0xc000 || g < 0xc000 || bl < 0xc000 {
				ink++
			}
		}
	}
	if ink < 2000 {
		t.Fatalf("screenshot %s is nearly blank (%d dark pixels sampled)", path, ink)
	}
	t.Logf("screenshot: %s", path)
}
