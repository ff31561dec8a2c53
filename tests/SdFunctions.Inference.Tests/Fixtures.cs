using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Runtime;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace SdFunctions.Inference.Tests;

/// <summary>
/// Paths to the provided material beside the checkout (../shared/fixtures) and readers for the reference
/// tensors: raw little-endian C-order arrays described by each group's JSON index.
/// </summary>
public static class Fixtures
{
    public static string Root { get; } = FindRoot();
    public static string TinySd => Path.Combine(Root, "tiny-sd");
    public static string TinyLcm => Path.Combine(Root, "tiny-lcm");
    public static string TinyTaesd => Path.Combine(Root, "tiny-taesd");
    public static string TinyShapes => Path.Combine(Root, "tiny-shapes");
    public static string Reference => Path.Combine(Root, "reference");

    private static string FindRoot()
    {
        if (Environment.GetEnvironmentVariable("SDF_FIXTURES") is { Length: > 0 } env) return env;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "shared", "fixtures");
            if (Directory.Exists(Path.Combine(candidate, "tiny-sd"))) return candidate;
        }
        throw new DirectoryNotFoundException("../shared/fixtures (beside the checkout) was not found; set SDF_FIXTURES.");
    }

    public static JsonElement Index(string group) =>
        JsonDocument.Parse(File.ReadAllText(Path.Combine(Reference, group + ".json"))).RootElement;

    public static JsonElement Meta(string group) => Index(group).GetProperty("meta");

    public static string FileOf(string group, string name)
    {
        foreach (var t in Index(group).GetProperty("tensors").EnumerateArray())
            if (t.GetProperty("name").GetString() == name) return Path.Combine(Reference, t.GetProperty("file").GetString()!);
        throw new KeyNotFoundException($"{group}.json has no tensor '{name}'");
    }

    public static bool Has(string group, string name) =>
        Index(group).GetProperty("tensors").EnumerateArray().Any(t => t.GetProperty("name").GetString() == name);

    public static float[] Floats(string group, string name) => MemoryMarshal.Cast<byte, float>(File.ReadAllBytes(FileOf(group, name))).ToArray();
    public static long[] Longs(string group, string name) => MemoryMarshal.Cast<byte, long>(File.ReadAllBytes(FileOf(group, name))).ToArray();
    public static byte[] Bytes(string group, string name) => File.ReadAllBytes(FileOf(group, name));

    // Each run works under tmp/sdf-tests/<pid>: deleted at the end of a run that passed (TempCleanupFramework), kept when
    // a test failed; a run that was killed leaves it, and the next run removes the folders of runs whose process is gone.
    private static readonly Lazy<string> RunRoot = new(() =>
    {
        string root = Path.Combine(Path.GetTempPath(), "sdf-tests");
        if (Directory.Exists(root))
            foreach (string dir in Directory.GetDirectories(root))
                if (int.TryParse(Path.GetFileName(dir), out int pid) && pid != Environment.ProcessId && !IsRunning(pid))
                    try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        return Directory.CreateDirectory(Path.Combine(root, Environment.ProcessId.ToString())).FullName;
    });

    private static bool IsRunning(int pid)
    {
        try { using var p = System.Diagnostics.Process.GetProcessById(pid); return !p.HasExited; }
        catch (ArgumentException) { return false; }
    }

    /// <summary>At the end of the run: delete this run's temp folder if every test passed, else keep it and say where.</summary>
    internal static void EndOfRun(bool allPassed)
    {
        if (!RunRoot.IsValueCreated) return;
        if (!allPassed)
        {
            Console.Error.WriteLine($"A test failed: its files are kept in {RunRoot.Value}");
            return;
        }
        try { Directory.Delete(RunRoot.Value, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>A new folder path under this test run's temp root.</summary>
    public static string TempDirectory(string prefix) => Path.Combine(RunRoot.Value, $"{prefix}-{Guid.NewGuid().ToString("N")[..8]}");

    /// <summary>
    /// A bundle's UNet (batch 2, h×w latents, 77 tokens) run on the inputs of a reference case of reference/unet.json;
    /// its output is comparable with that case's out_sample.
    /// </summary>
    public static float[] RunUNetCase(string bundleDir, string @case, int h, int w, SessionSettings? settings = null)
    {
        var factory = new OnnxSessionFactory(settings ?? TinyPipelineFixture.CachedSessions, NullLogger.Instance);
        using var unet = new UNetModel(factory, ModelBundle.Open(bundleDir), 2, h, w, 77, 32);
        using var run = new RunOptions();
        Floats("unet", $"{@case}/sample").CopyTo(unet.Sample, 0);
        Floats("unet", $"{@case}/encoder_hidden_states").CopyTo(unet.EncoderHiddenStates, 0);
        unet.Run(Longs("unet", $"{@case}/timestep")[0], run);
        return unet.Output;
    }

    /// <summary>A PNG's RGB pixels (HWC bytes): a reference image, or one we wrote.</summary>
    public static byte[] Pixels(string pngPath)
    {
        using var image = Image.Load<Rgb24>(pngPath);
        var rgb = new byte[image.Width * image.Height * 3];
        image.CopyPixelDataTo(rgb);
        return rgb;
    }

    /// <summary>A copy of the tiny bundle in a temp folder, for tests that break or change it.</summary>
    public static string CopyTinySd() => CopyFolder(TinySd, TempDirectory("sdf-tiny"));

    /// <summary>Copies a folder's files (writable) into <paramref name="dest"/>; returns <paramref name="dest"/>.</summary>
    public static string CopyFolder(string source, string dest)
    {
        foreach (string file in Directory.EnumerateFiles(source, "*", SearchOption.AllDirectories))
        {
            string target = Path.Combine(dest, Path.GetRelativePath(source, file));
            Directory.CreateDirectory(Path.GetDirectoryName(target)!);
            File.Copy(file, target, overwrite: true);
            File.SetAttributes(target, FileAttributes.Normal);
        }
        return dest;
    }

    /// <summary>
    /// tiny-sd whose vae_encoder is its deterministic export (vae_encoder-parameters: optimum ≥ 1.24's latent_parameters), so
    /// image-to-image can be checked against diffusers with the reference ε (made once per test run).
    /// </summary>
    public static string TinySdWithParameterEncoder => TinySdWithParameterEncoderFolder.Value;
    private static readonly Lazy<string> TinySdWithParameterEncoderFolder = new(() =>
    {
        string dir = CopyTinySd();
        Directory.Delete(Path.Combine(dir, "vae_encoder"), recursive: true);
        Directory.Move(Path.Combine(dir, "vae_encoder-parameters"), Path.Combine(dir, "vae_encoder"));
        File.Copy(Path.Combine(TinySd, "vae_encoder", "config.json"), Path.Combine(dir, "vae_encoder", "config.json"));
        return dir;
    });

    /// <summary>tiny-sd with tiny-taesd's decoder as <c>taesd_decoder/</c> beside its VAE (made once per test run).</summary>
    public static string TinySdWithTaesd => TinySdWithTaesdFolder.Value;
    private static readonly Lazy<string> TinySdWithTaesdFolder = new(() =>
    {
        string dir = CopyTinySd();
        CopyFolder(Path.Combine(TinyTaesd, "vae_decoder"), Path.Combine(dir, "taesd_decoder"));
        return dir;
    });
}

/// <summary>Comparisons that report where and by how much two arrays differ.</summary>
public static class Close
{
    public static double MaxAbs(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        double max = 0;
        for (int i = 0; i < expected.Length; i++) max = Math.Max(max, Math.Abs(expected[i] - (double)actual[i]));
        return max;
    }

    /// <summary>max |e − a| / max |e|: relative to the tensor's scale.</summary>
    public static double MaxRel(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        double scale = 0;
        foreach (float e in expected) scale = Math.Max(scale, Math.Abs(e));
        return MaxAbs(expected, actual) / Math.Max(scale, 1e-30);
    }

    /// <summary>‖a − e‖₂ / ‖e‖₂: how far a whole output moved.</summary>
    public static double RelativeL2(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++) { double d = actual[i] - (double)expected[i]; num += d * d; den += expected[i] * (double)expected[i]; }
        return Math.Sqrt(num / den);
    }

    /// <summary>Peak signal-to-noise ratio of two 8-bit images, in dB (∞ when equal).</summary>
    public static double Psnr(byte[] a, byte[] b)
    {
        Assert.Equal(a.Length, b.Length);
        return Inference.Quality.ImageQuality.Psnr(a, b);
    }

    /// <summary>The largest difference of one channel of one pixel, in levels.</summary>
    public static int MaxLevels(byte[] expected, byte[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        return expected.Zip(actual, (e, a) => Math.Abs(e - a)).Max();
    }

    public static void AllClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double absTol, string what)
    {
        double d = MaxAbs(expected, actual);
        Assert.True(d <= absTol, $"{what}: max abs difference {d:E3} > tolerance {absTol:E1}");
    }

    public static void RelClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, double relTol, string what)
    {
        double d = MaxRel(expected, actual);
        Assert.True(d <= relTol, $"{what}: max abs difference / max |expected| = {d:E3} > tolerance {relTol:E1}");
    }
}
