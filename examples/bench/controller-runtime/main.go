// The benchmark workload on controller-runtime: the Go baseline of `make bench` (BENCHMARKS.md).
//
// It does the API work of the kuberator bench operator (examples/src/bench/kuberator_impl.rs):
// per BenchObject one finalizer merge patch guarded by resourceVersion, one status merge patch
// (`status.observedGeneration`) and one events.k8s.io/v1 Event, with MaxConcurrentReconciles
// equal to kuberator's concurrency and the client's QPS limit off. With --children it also
// keeps one owned ConfigMap per object (controllerutil.CreateOrUpdate, Owns), the child of the
// reconciles-per-generation row.
//
//	bench-controller-runtime --kubeconfig PATH [--concurrency 8] [--children] [--probe-addr :0]
//
// Runs until SIGTERM, then prints `reconciles=<count>` on stdout (every call of Reconcile).
//
// Deliberate choices, each the one a careful controller-runtime user makes:
//   - For(BenchObject) with predicate.GenerationChangedPredicate, so that the operator's own
//     finalizer and status writes do not come back as reconciles (kuberator filters its own
//     writes by itself);
//   - the Event is created in the reconcile with the client, not through the manager's
//     asynchronous recorder (whose broadcaster drops events beyond 1,000 queued), so that every
//     implementation sends the same writes and a reconcile ends when its writes are done;
//   - everything else is controller-runtime's default (priority queue, cache, no transform).
package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	crscheme "sigs.k8s.io/controller-runtime/pkg/scheme"
)

const (
	finalizer      = "bench.kuberator.dev/cleanup"
	namespace      = "default"
	eventReason    = "Reconciled"
	eventAction    = "Reconcile"
	controllerName = "bench.kuberator.dev/controller-runtime"
)

var groupVersion = schema.GroupVersion{Group: "bench.kuberator.dev", Version: "v1"}

// BenchObjectSpec is the 256-byte spec of examples/src/bench/mod.rs.
type BenchObjectSpec struct {
	Payload  string `json:"payload"`
	Replicas int32  `json:"replicas"`
}

// BenchObjectStatus is what every implementation writes.
type BenchObjectStatus struct {
	ObservedGeneration *int64 `json:"observedGeneration,omitempty"`
}

// BenchObject is the bench.kuberator.dev/v1 BenchObject custom resource.
type BenchObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              BenchObjectSpec   `json:"spec"`
	Status            BenchObjectStatus `json:"status,omitempty"`
}

// BenchObjectList is a list of BenchObjects.
type BenchObjectList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BenchObject `json:"items"`
}

// DeepCopyInto copies in into out (written by hand: the type is too small for controller-gen).
func (in *BenchObject) DeepCopyInto(out *BenchObject) {
	*out = *in
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if in.Status.ObservedGeneration != nil {
		generation := *in.Status.ObservedGeneration
		out.Status.ObservedGeneration = &generation
	}
}

// DeepCopy returns a deep copy.
func (in *BenchObject) DeepCopy() *BenchObject {
	out := new(BenchObject)
	in.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (in *BenchObject) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (in *BenchObjectList) DeepCopyObject() runtime.Object {
	out := new(BenchObjectList)
	*out = *in
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	if in.Items != nil {
		out.Items = make([]BenchObject, len(in.Items))
		for i := range in.Items {
			in.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
	return out
}

// reconciler is the bench's controller.
type reconciler struct {
	client.Client
	scheme     *runtime.Scheme
	children   bool
	reconciles atomic.Uint64
}

func (r *reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	r.reconciles.Add(1)
	var object BenchObject
	if err := r.Get(ctx, req.NamespacedName, &object); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !object.DeletionTimestamp.IsZero() {
		if controllerutil.ContainsFinalizer(&object, finalizer) {
			original := object.DeepCopy()
			controllerutil.RemoveFinalizer(&object, finalizer)
			return ctrl.Result{}, r.Patch(ctx, &object, client.MergeFromWithOptions(original, client.MergeFromWithOptimisticLock{}))
		}
		return ctrl.Result{}, nil
	}
	if !controllerutil.ContainsFinalizer(&object, finalizer) {
		original := object.DeepCopy()
		controllerutil.AddFinalizer(&object, finalizer)
		if err := r.Patch(ctx, &object, client.MergeFromWithOptions(original, client.MergeFromWithOptimisticLock{})); err != nil {
			return ctrl.Result{}, err
		}
	}
	if r.children {
		child := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: object.Name, Namespace: object.Namespace}}
		if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, child, func() error {
			child.Data = map[string]string{"replicas": fmt.Sprint(object.Spec.Replicas), "generation": fmt.Sprint(object.Generation)}
			return controllerutil.SetControllerReference(&object, child, r.scheme)
		}); err != nil {
			return ctrl.Result{}, err
		}
	}
	if object.Status.ObservedGeneration != nil && *object.Status.ObservedGeneration == object.Generation {
		return ctrl.Result{}, nil
	}
	original := object.DeepCopy()
	generation := object.Generation
	object.Status.ObservedGeneration = &generation
	if err := r.Status().Patch(ctx, &object, client.MergeFrom(original)); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, r.event(ctx, &object)
}

// event creates one Normal events.k8s.io/v1 Event about object.
func (r *reconciler) event(ctx context.Context, object *BenchObject) error {
	now := time.Now()
	event := &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Name:      fmt.Sprintf("%s.%x", object.Name, now.UnixNano()),
			Namespace: object.Namespace,
		},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: controllerName,
		ReportingInstance:   "controller-runtime",
		Action:              eventAction,
		Reason:              eventReason,
		Note:                "status written",
		Type:                corev1.EventTypeNormal,
		Regarding: corev1.ObjectReference{
			APIVersion:      groupVersion.String(),
			Kind:            "BenchObject",
			Name:            object.Name,
			Namespace:       object.Namespace,
			UID:             object.UID,
			ResourceVersion: object.ResourceVersion,
		},
	}
	return r.Create(ctx, event)
}

func main() {
	// An own flag set: controller-runtime registers `--kubeconfig` on the global one.
	flags := flag.NewFlagSet("bench-controller-runtime", flag.ExitOnError)
	kubeconfig := flags.String("kubeconfig", "", "kubeconfig of the API server")
	concurrency := flags.Int("concurrency", 8, "MaxConcurrentReconciles")
	children := flags.Bool("children", false, "keep one owned ConfigMap per object")
	probeAddr := flags.String("probe-addr", "0", "address of /readyz and /healthz (0: off)")
	_ = flags.Parse(os.Args[1:])
	if err := run(*kubeconfig, *concurrency, *children, *probeAddr); err != nil {
		fmt.Fprintln(os.Stderr, "bench-controller-runtime:", err)
		os.Exit(1)
	}
}

func run(kubeconfig string, concurrency int, children bool, probeAddr string) error {
	// Errors only (Verbosity -1 drops every Info line), on stderr like the Rust implementations.
	ctrl.SetLogger(funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, prefix, args) }, funcr.Options{Verbosity: -1}))
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s: %w", kubeconfig, err)
	}
	config.QPS = -1 // client-side rate limit off, as in the Rust implementations
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return err
	}
	schemeBuilder := &crscheme.Builder{GroupVersion: groupVersion}
	schemeBuilder.Register(&BenchObject{}, &BenchObjectList{})
	if err := schemeBuilder.AddToScheme(scheme); err != nil {
		return err
	}
	manager, err := ctrl.NewManager(config, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: probeAddr,
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{namespace: {}}},
	})
	if err != nil {
		return err
	}
	if probeAddr != "0" {
		if err := manager.AddReadyzCheck("informers", func(req *http.Request) error {
			if !manager.GetCache().WaitForCacheSync(req.Context()) {
				return fmt.Errorf("informers not synced")
			}
			return nil
		}); err != nil {
			return err
		}
		if err := manager.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return err
		}
	}
	r := &reconciler{Client: manager.GetClient(), scheme: scheme, children: children}
	b := builder.ControllerManagedBy(manager).
		For(&BenchObject{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		WithOptions(controller.Options{MaxConcurrentReconciles: concurrency})
	if children {
		b = b.Owns(&corev1.ConfigMap{})
	}
	if err := b.Complete(r); err != nil {
		return err
	}
	if err := manager.Start(ctrl.SetupSignalHandler()); err != nil {
		return err
	}
	fmt.Printf("reconciles=%d\n", r.reconciles.Load())
	return nil
}
