using System.Runtime.Intrinsics.X86;

namespace SdFunctions.Inference.Runtime;

/// <summary>What the CPU offers that changes ONNX Runtime's speed: physical cores and the int8/AVX-512 features.</summary>
public static class CpuInfo
{
    private static readonly Lazy<(int Cores, HashSet<string> Flags, string Model)> Info = new(Read);

    /// <summary>Physical cores available to this process (hyper-threads don't speed up ORT's GEMMs).</summary>
    public static int PhysicalCores => Math.Max(1, Math.Min(Info.Value.Cores, Environment.ProcessorCount));

    public static string Model => Info.Value.Model;
    public static bool Avx512F => System.Runtime.Intrinsics.X86.Avx512F.IsSupported || Info.Value.Flags.Contains("avx512f");
    public static bool Avx512Vnni => Info.Value.Flags.Contains("avx512_vnni");
    public static bool AvxVnni => Info.Value.Flags.Contains("avx_vnni") || System.Runtime.Intrinsics.X86.AvxVnni.IsSupported;

    /// <summary>A short, stable description used in cache keys and health reports.</summary>
    public static string FeatureSummary =>
        string.Join(",", new[] { ("avx2", Avx2.IsSupported), ("avx512f", Avx512F), ("avx512_vnni", Avx512Vnni), ("avx_vnni", AvxVnni) }
            .Where(f => f.Item2).Select(f => f.Item1));

    private static (int, HashSet<string>, string) Read()
    {
        var flags = new HashSet<string>(StringComparer.Ordinal);
        var cores = new HashSet<(string, string)>();
        string model = "unknown";
        try
        {
            string physical = "0";
            foreach (string line in File.ReadLines("/proc/cpuinfo"))
            {
                int colon = line.IndexOf(':');
                if (colon < 0) continue;
                string key = line[..colon].Trim(), value = line[(colon + 1)..].Trim();
                switch (key)
                {
                    case "physical id": physical = value; break;
                    case "core id": cores.Add((physical, value)); break;
                    case "model name": model = value; break;
                    case "flags" when flags.Count == 0: flags.UnionWith(value.Split(' ', StringSplitOptions.RemoveEmptyEntries)); break;
                }
            }
        }
        catch (IOException) { } // not Linux: fall back to the logical count
        catch (UnauthorizedAccessException) { }
        return (cores.Count > 0 ? cores.Count : Environment.ProcessorCount, flags, model);
    }
}
