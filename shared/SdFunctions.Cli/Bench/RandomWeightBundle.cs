using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Win32.SafeHandles;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Cli.Bench;

/// <summary>
/// Turns the weightless full-size graphs of <c>fixtures/sd15-graphs</c> into a loadable diffusers ONNX bundle: each
/// component's <c>model.onnx_data</c> is written from its <c>manifest.json</c> (normal(0, 0.02) / ones / zeros, as the
/// manifest's <c>fill</c> says), and the tokenizer and scheduler come from a small bundle of the same family. Weight
/// values don't change speed or memory, so this gives real-size compute. Deterministic (each tensor's values are seeded
/// by its name) and reused: a finished bundle carries a stamp of the manifests it was made from.
/// </summary>
public static class RandomWeightBundle
{
    private const string StampFile = ".random-weights.json";
    private static readonly string[] Components = ["text_encoder", "unet", "vae_decoder", "vae_encoder"];

    /// <summary>The SD 1.5 values the graphs were exported with (fixtures/sd15-graphs/README.md), for the configs the runtime reads.</summary>
    private static readonly Dictionary<string, JsonObject> ConfigPatches = new()
    {
        ["unet"] = new() { ["sample_size"] = 64, ["block_out_channels"] = new JsonArray(320, 640, 1280, 1280), ["cross_attention_dim"] = 768, ["norm_num_groups"] = 32 },
        ["vae_decoder"] = new() { ["sample_size"] = 512, ["block_out_channels"] = new JsonArray(128, 256, 512, 512), ["norm_num_groups"] = 32, ["scaling_factor"] = 0.18215 },
        ["vae_encoder"] = new() { ["sample_size"] = 512, ["block_out_channels"] = new JsonArray(128, 256, 512, 512), ["norm_num_groups"] = 32, ["scaling_factor"] = 0.18215 },
        ["text_encoder"] = new() { ["hidden_size"] = 768, ["intermediate_size"] = 3072, ["num_hidden_layers"] = 12, ["num_attention_heads"] = 12, ["projection_dim"] = 768 },
    };

    /// <summary>
    /// Makes (or reuses) the bundle in <paramref name="outputDirectory"/> from <paramref name="graphsDirectory"/>;
    /// <paramref name="templateBundle"/> gives the tokenizer, scheduler and config files.
    /// </summary>
    public static async Task<bool> EnsureAsync(string graphsDirectory, string templateBundle, string outputDirectory, IProgress<string>? progress, CancellationToken ct)
    {
        string stamp = Stamp(graphsDirectory);
        string stampPath = Path.Combine(outputDirectory, StampFile);
        if (File.Exists(stampPath) && await File.ReadAllTextAsync(stampPath, ct) == stamp) return false;

        if (Directory.Exists(outputDirectory)) Directory.Delete(outputDirectory, recursive: true);
        Directory.CreateDirectory(outputDirectory);
        foreach (string folder in new[] { "tokenizer", "scheduler" })
            CopyFolder(Path.Combine(templateBundle, folder), Path.Combine(outputDirectory, folder));
        var index = JsonNode.Parse(await File.ReadAllTextAsync(Path.Combine(templateBundle, "model_index.json"), ct))!.AsObject();
        index["_name_or_path"] = "sd15-random-weights";
        await File.WriteAllTextAsync(Path.Combine(outputDirectory, "model_index.json"), index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }), ct);

        foreach (string component in Components)
        {
            string source = Path.Combine(graphsDirectory, component), target = Path.Combine(outputDirectory, component);
            Directory.CreateDirectory(target);
            progress?.Report($"random weights: {component}");
            // Bytes, not File.Copy: the fixture is read-only and the copy should not be.
            await File.WriteAllBytesAsync(Path.Combine(target, "model.onnx"), await File.ReadAllBytesAsync(Path.Combine(source, "model.onnx"), ct), ct);
            await WriteWeightsAsync(Path.Combine(source, "manifest.json"), target, ct);
            var config = JsonNode.Parse(await File.ReadAllTextAsync(Path.Combine(templateBundle, component, "config.json"), ct))!.AsObject();
            foreach (var (key, value) in ConfigPatches[component]) config[key] = value!.DeepClone();
            config["_name_or_path"] = $"sd15-random-weights/{component}";
            await File.WriteAllTextAsync(Path.Combine(target, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }), ct);
        }
        await File.WriteAllTextAsync(stampPath, stamp, ct); // last: a half-made bundle has no stamp and is made again
        return true;
    }

    /// <summary>Writes <c>model.onnx_data</c> for one manifest: every tensor at its offset, tensors in parallel.</summary>
    public static async Task WriteWeightsAsync(string manifestPath, string targetDirectory, CancellationToken ct)
    {
        using var manifest = JsonDocument.Parse(await File.ReadAllTextAsync(manifestPath, ct));
        var root = manifest.RootElement;
        string fileName = root.GetProperty("external_data_file").GetString()!;
        using var handle = File.OpenHandle(Path.Combine(targetDirectory, fileName), FileMode.Create, FileAccess.ReadWrite,
            preallocationSize: root.GetProperty("external_data_total_bytes").GetInt64());
        RandomAccess.SetLength(handle, root.GetProperty("external_data_total_bytes").GetInt64());
        var tensors = root.GetProperty("stripped").EnumerateArray()
            .Select(e => new Tensor(e.GetProperty("name").GetString()!, e.GetProperty("fill").GetString()!, e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64()))
            .ToList();
        await Parallel.ForEachAsync(tensors, new ParallelOptions { CancellationToken = ct, MaxDegreeOfParallelism = Environment.ProcessorCount },
            (tensor, _) => { Write(handle, tensor); return ValueTask.CompletedTask; });
    }

    private sealed record Tensor(string Name, string Fill, long Offset, long Length);

    private static void Write(SafeFileHandle handle, Tensor tensor)
    {
        const int chunk = 1 << 20; // floats per write
        var values = new float[(int)Math.Min(chunk, tensor.Length / 4)];
        var random = new SeededGaussianNoise(BitConverter.ToInt64(SHA256.HashData(Encoding.UTF8.GetBytes(tensor.Name)), 0));
        for (long written = 0; written < tensor.Length; written += values.Length * 4L)
        {
            int count = (int)Math.Min(values.Length, (tensor.Length - written) / 4);
            var span = values.AsSpan(0, count);
            switch (tensor.Fill)
            {
                case "ones": span.Fill(1f); break;
                case "zeros": span.Clear(); break;
                case "normal(0,0.02)":
                    random.Fill(span);
                    for (int i = 0; i < count; i++) span[i] *= 0.02f;
                    break;
                default: throw new InvalidDataException($"{tensor.Name}: unknown fill rule '{tensor.Fill}'.");
            }
            RandomAccess.Write(handle, MemoryMarshal.AsBytes(span), tensor.Offset + written);
        }
    }

    /// <summary>The manifests' hash: a bundle made from other graphs (or by another fill rule) is made again.</summary>
    private static string Stamp(string graphsDirectory)
    {
        var text = new StringBuilder("fill=v2;");
        foreach (string component in Components)
        {
            string manifest = Path.Combine(graphsDirectory, component, "manifest.json");
            if (!File.Exists(manifest)) throw new FileNotFoundException($"{manifest} is missing: --graphs must be the sd15-graphs folder.", manifest);
            text.Append(component).Append('=').Append(Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(manifest)))).Append(';');
        }
        return text.ToString();
    }

    private static void CopyFolder(string source, string target)
    {
        Directory.CreateDirectory(target);
        foreach (string file in Directory.EnumerateFiles(source)) File.Copy(file, Path.Combine(target, Path.GetFileName(file)));
    }
}
