using System.Runtime.CompilerServices;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Inference.Tests;

internal static class OrtSetup
{
    /// <summary>
    /// Creates ONNX Runtime's environment our way (a global thread pool) before any test runs. Tests make RunOptions and OrtValues
    /// themselves, in parallel: the first of those racing the first session could otherwise create ORT's default environment (no
    /// global pool) while OrtEnvironment believes its own exists, and every shared-pool session after it fails to load.
    /// </summary>
    [ModuleInitializer]
    internal static void CreateEnvironment() => _ = OrtEnvironment.Instance;
}
