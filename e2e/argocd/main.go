// Command weft-argocd-health evaluates Weft's Argo CD health checks with Argo CD's own Lua
// health code (github.com/argoproj/argo-cd/v3/util/lua), in both forms Argo CD runs them:
//
//   - upstream layout (resource_customizations/<group>/<Kind>/health.lua), which Argo CD
//     treats as a built-in script and runs with the Lua standard libraries open;
//   - the argocd-cm form (resource.customizations.health.<group>_<Kind>), read by Argo CD's
//     own settings code and run with the libraries closed unless useOpenLibs is set.
//
// Usage:
//
//	weft-argocd-health check CUSTOMIZATIONS_DIR ARGOCD_CM_YAML
//	    run every health_test.yaml under CUSTOMIZATIONS_DIR in both forms; exit 1 on a mismatch
//	weft-argocd-health eval CUSTOMIZATIONS_DIR ARGOCD_CM_YAML OBJECT_YAML
//	    print the health of one object in both forms as JSON
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/argoproj/gitops-engine/pkg/health"
	log "github.com/sirupsen/logrus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/kubernetes/fake"
	"sigs.k8s.io/yaml"

	"github.com/argoproj/argo-cd/v3/util/lua"
	"github.com/argoproj/argo-cd/v3/util/settings"
)

// healthTest is one entry of an upstream health_test.yaml.
type healthTest struct {
	InputPath    string              `json:"inputPath"`
	HealthStatus health.HealthStatus `json:"healthStatus"`
}

// healthTests is an upstream health_test.yaml.
type healthTests struct {
	Tests []healthTest `json:"tests"`
}

// result is the health of one object in both forms.
type result struct {
	Upstream *health.HealthStatus `json:"upstream"`
	ArgoCDCM *health.HealthStatus `json:"argocdCm"`
}

func main() {
	// Argo CD's settings code logs at info level; only its warnings matter here.
	log.SetLevel(log.WarnLevel)
	var err error
	switch {
	case len(os.Args) == 4 && os.Args[1] == "check":
		err = check(os.Args[2], os.Args[3])
	case len(os.Args) == 5 && os.Args[1] == "eval":
		err = evalOne(os.Args[2], os.Args[3], os.Args[4])
	default:
		err = errors.New("usage: weft-argocd-health check DIR ARGOCD_CM | eval DIR ARGOCD_CM OBJECT")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}

// loadObject reads one Kubernetes object from a YAML file.
func loadObject(path string) (*unstructured.Unstructured, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	obj := map[string]any{}
	if err := yaml.Unmarshal(data, &obj); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &unstructured.Unstructured{Object: obj}, nil
}

// configMapOverrides reads the argocd-cm file through Argo CD's settings manager (backed by
// a fake clientset holding that ConfigMap), so keys are parsed exactly as Argo CD parses them.
func configMapOverrides(path string) (lua.ResourceHealthOverrides, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	cm := &corev1.ConfigMap{}
	if err := yaml.UnmarshalStrict(data, cm); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if cm.Name != "argocd-cm" {
		return nil, fmt.Errorf("%s: the ConfigMap is named %q, Argo CD reads argocd-cm", path, cm.Name)
	}
	ns := cm.Namespace
	if ns == "" {
		ns = "argocd"
		cm.Namespace = ns
	}
	secret := &corev1.Secret{}
	secret.Name, secret.Namespace = "argocd-secret", ns
	secret.Labels = map[string]string{"app.kubernetes.io/part-of": "argocd"}
	client := fake.NewClientset(cm, secret)
	mgr := settings.NewSettingsManager(context.Background(), client, ns)
	overrides, err := mgr.GetResourceOverrides()
	if err != nil {
		return nil, fmt.Errorf("%s: Argo CD's settings code rejects it: %w", path, err)
	}
	return overrides, nil
}

// upstreamHealth runs a script as Argo CD runs a built-in one: standard libraries open.
func upstreamHealth(script string, obj *unstructured.Unstructured) (*health.HealthStatus, error) {
	vm := lua.VM{UseOpenLibs: true}
	return vm.ExecuteHealthLua(obj, script)
}

// cmHealth assesses an object as the application controller does, with the overrides from
// argocd-cm (the libraries open only where useOpenLibs says so).
func cmHealth(overrides lua.ResourceHealthOverrides, obj *unstructured.Unstructured) (*health.HealthStatus, error) {
	return health.GetResourceHealth(obj, overrides)
}

// scriptFor reads the upstream health.lua that applies to obj.
func scriptFor(dir string, obj *unstructured.Unstructured) (string, error) {
	gvk := obj.GroupVersionKind()
	data, err := os.ReadFile(filepath.Join(dir, gvk.Group, gvk.Kind, "health.lua"))
	return string(data), err
}

// evalOne prints the health of one object in both forms.
func evalOne(dir, cmPath, objPath string) error {
	overrides, err := configMapOverrides(cmPath)
	if err != nil {
		return err
	}
	obj, err := loadObject(objPath)
	if err != nil {
		return err
	}
	script, err := scriptFor(dir, obj)
	if err != nil {
		return err
	}
	var r result
	if r.Upstream, err = upstreamHealth(script, obj); err != nil {
		return fmt.Errorf("upstream form: %w", err)
	}
	if r.ArgoCDCM, err = cmHealth(overrides, obj); err != nil {
		return fmt.Errorf("argocd-cm form: %w", err)
	}
	out, err := json.Marshal(r)
	if err != nil {
		return err
	}
	fmt.Println(string(out))
	return nil
}

// check runs every health_test.yaml under dir in both forms and checks that argocd-cm holds
// exactly the upstream scripts.
func check(dir, cmPath string) error {
	overrides, err := configMapOverrides(cmPath)
	if err != nil {
		return err
	}
	var testFiles []string
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == "health_test.yaml" {
			testFiles = append(testFiles, path)
		}
		return err
	})
	if err != nil {
		return err
	}
	sort.Strings(testFiles)
	passed, failed := 0, 0
	seen := map[string]bool{}
	for _, file := range testFiles {
		p, f, key, err := checkKind(dir, file, overrides)
		if err != nil {
			return err
		}
		passed, failed, seen[key] = passed+p, failed+f, true
	}
	for key, o := range overrides {
		if o.HealthLua != "" && !seen[key] {
			fmt.Printf("FAIL argocd-cm has a health check for %s, which has no upstream health_test.yaml\n", key)
			failed++
		}
	}
	fmt.Printf("%d passed, %d failed\n", passed, failed)
	if failed > 0 || passed == 0 {
		return errors.New("health checks do not give the expected health")
	}
	return nil
}

// checkKind runs one health_test.yaml in both forms; it returns the counts and the kind's
// override key (group/Kind).
func checkKind(dir, file string, overrides lua.ResourceHealthOverrides) (int, int, string, error) {
	kindDir := filepath.Dir(file)
	rel, _ := filepath.Rel(dir, kindDir)
	key := filepath.ToSlash(rel)
	script, err := os.ReadFile(filepath.Join(kindDir, "health.lua"))
	if err != nil {
		return 0, 0, key, err
	}
	passed, failed := 0, 0
	if o := overrides[key]; o.HealthLua != string(script) {
		fmt.Printf("FAIL %s: the argocd-cm script differs from %s/health.lua\n", key, rel)
		failed++
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return 0, 0, key, err
	}
	var tests healthTests
	if err := yaml.UnmarshalStrict(data, &tests); err != nil {
		return 0, 0, key, fmt.Errorf("%s: %w", file, err)
	}
	for _, t := range tests.Tests {
		obj, err := loadObject(filepath.Join(kindDir, t.InputPath))
		if err != nil {
			return 0, 0, key, err
		}
		for _, form := range []string{"upstream", "argocd-cm"} {
			var got *health.HealthStatus
			if form == "upstream" {
				got, err = upstreamHealth(string(script), obj)
			} else {
				got, err = cmHealth(overrides, obj)
			}
			if err == nil && got != nil && *got == t.HealthStatus {
				fmt.Printf("PASS %-9s %s %s: %s %q\n", form, key, t.InputPath, got.Status, got.Message)
				passed++
				continue
			}
			fmt.Printf("FAIL %-9s %s %s: want %s %q, got %s (error: %v)\n", form, key, t.InputPath,
				t.HealthStatus.Status, t.HealthStatus.Message, describe(got), err)
			failed++
		}
	}
	return passed, failed, key, nil
}

// describe prints a health status that may be missing.
func describe(h *health.HealthStatus) string {
	if h == nil {
		return "no health (Argo CD has no check for this kind)"
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s %q", h.Status, h.Message)
	return strings.TrimSpace(b.String())
}
