using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Cli;
using SdFunctions.Cli.Bench;

namespace SdFunctions.Inference.Tests;

/// <summary>sdf bench: the random-weight refill of the SD 1.5 graphs, and a whole (small) run on the tiny bundle.</summary>
public class BenchTests
{
    private static string Sd15Graphs => Path.Combine(Fixtures.Root, "sd15-graphs");

    [Fact]
    public async Task RandomWeightsFollowTheManifestsFillRulesAndAreTheSameEveryTime()
    {
        string manifestPath = Path.Combine(Sd15Graphs, "vae_decoder", "manifest.json");
        using var manifest = JsonDocument.Parse(File.ReadAllText(manifestPath));
        string a = Fixtures.TempDirectory("weights-a"), b = Fixtures.TempDirectory("weights-b");
        Directory.CreateDirectory(a);
        Directory.CreateDirectory(b);
        await RandomWeightBundle.WriteWeightsAsync(manifestPath, a, default);
        await RandomWeightBundle.WriteWeightsAsync(manifestPath, b, default);

        string data = Path.Combine(a, "model.onnx_data");
        Assert.Equal(manifest.RootElement.GetProperty("external_data_total_bytes").GetInt64(), new FileInfo(data).Length);
        Assert.Equal(SHA256.HashData(File.ReadAllBytes(data)), SHA256.HashData(File.ReadAllBytes(Path.Combine(b, "model.onnx_data"))));

        using var file = File.OpenRead(data);
        var seen = new HashSet<string>();
        foreach (var e in manifest.RootElement.GetProperty("stripped").EnumerateArray())
        {
            string fill = e.GetProperty("fill").GetString()!;
            var bytes = new byte[e.GetProperty("length").GetInt64()];
            file.Position = e.GetProperty("offset").GetInt64();
            file.ReadExactly(bytes);
            var values = MemoryMarshal.Cast<byte, float>(bytes);
            switch (fill)
            {
                case "ones": Assert.All(values.ToArray(), v => Assert.Equal(1f, v)); break;
                case "zeros": Assert.All(values.ToArray(), v => Assert.Equal(0f, v)); break;
                default:
                    if (values.Length < 100_000) continue; // the statistics need a large tensor
                    double mean = 0, square = 0;
                    foreach (float v in values) { mean += v; square += (double)v * v; }
                    mean /= values.Length;
                    double std = Math.Sqrt(square / values.Length - mean * mean);
                    Assert.InRange(mean, -0.001, 0.001);
                    Assert.InRange(std, 0.0195, 0.0205); // normal(0, 0.02)
                    break;
            }
            seen.Add(fill);
        }
        Assert.Equal(["normal(0,0.02)", "ones", "zeros"], seen.Order());

        // The refilled full-size decoder loads from its path and runs (on a small latent: the graph is the real one).
        File.Copy(Path.Combine(Sd15Graphs, "vae_decoder", "model.onnx"), Path.Combine(a, "model.onnx"));
        using var session = new InferenceSession(Path.Combine(a, "model.onnx"));
        var latent = new float[4 * 8 * 8];
        new Inference.Pipeline.SeededGaussianNoise(1).Fill(latent);
        using var input = OrtValue.CreateTensorValueFromMemory(latent, [1, 4, 8, 8]);
        using var outputs = session.Run(new RunOptions(), ["latent_sample"], [input], ["sample"]);
        Assert.Equal([1, 3, 64, 64], outputs[0].GetTensorTypeAndShape().Shape);
        Assert.All(outputs[0].GetTensorDataAsSpan<float>().ToArray(), v => Assert.True(float.IsFinite(v)));
    }

    [Fact]
    public async Task ABenchRunOnTheTinyBundleWritesEveryFigureAndRatio()
    {
        string dir = Fixtures.TempDirectory("bench");
        Directory.CreateDirectory(dir);
        string md = Path.Combine(dir, "BENCHMARKS.md"), json = Path.Combine(dir, "BENCHMARKS.json");
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(["bench", "--fp32-bundle", Fixtures.TinySd, "--graphs", Sd15Graphs, "--work", Path.Combine(dir, "work"),
            "--variants", "fp32,int8_tome0.4", "--repeats", "1", "--deep-cache-intervals", "2,3", "--quality-pairs", "6",
            "--quality-lcm-bundle", Path.Combine(Fixtures.Root, "tiny-shapes-lcm"), "--out", md, "--json", json], TextWriter.Null, stderr);
        Assert.True(code == 0, stderr.ToString());

        using var report = JsonDocument.Parse(File.ReadAllText(json));
        var variants = report.RootElement.GetProperty("variants");
        Assert.Equal(["fp32", "int8_tome0.4"], variants.EnumerateObject().Select(v => v.Name));
        foreach (var variant in variants.EnumerateObject())
        {
            foreach (string figure in new[] { "unet_step_s", "text_encoder_s", "vae_decode_s", "load_cold_s", "load_warm_s", "peak_rss_bytes", "unet_bytes", "e2e_20_dpmpp_s" })
                Assert.True(variant.Value.GetProperty(figure).GetDouble() > 0, $"{variant.Name}.{figure}");
            Assert.True(variant.Value.GetProperty("load_warm_from_cache").GetBoolean(), $"{variant.Name}: the warm load used the cache");
        }
        Assert.Equal(1.0, variants.GetProperty("fp32").GetProperty("speedup_vs_fp32").GetDouble());
        var production = variants.GetProperty("int8_tome0.4");
        Assert.Equal(variants.GetProperty("fp32").GetProperty("unet_step_s").GetDouble() / production.GetProperty("unet_step_s").GetDouble(),
            production.GetProperty("speedup_vs_fp32").GetDouble(), 9);
        Assert.True(production.GetProperty("unet_bytes").GetInt64() < variants.GetProperty("fp32").GetProperty("unet_bytes").GetInt64(), "INT8 weights");
        // The 50-step run goes to the fastest variant only.
        Assert.Single(variants.EnumerateObject(), v => v.Value.TryGetProperty("e2e_50_pndm_s", out _));

        // Quality beside speed, on tiny-shapes: FP32 against itself is identical; the production recipe is judged beside FP32.
        var fp32Quality = variants.GetProperty("fp32").GetProperty("quality");
        Assert.Equal(6, fp32Quality.GetProperty("pairs").GetInt32());
        Assert.Equal("Infinity", fp32Quality.GetProperty("psnr_median").GetString());
        Assert.Equal(fp32Quality.GetProperty("fp32").GetProperty("right").GetInt32(), fp32Quality.GetProperty("candidate").GetProperty("right").GetInt32());
        var productionQuality = production.GetProperty("quality");
        Assert.InRange(productionQuality.GetProperty("psnr_median").GetDouble(), 10, 60);
        Assert.InRange(productionQuality.GetProperty("ssim_mean").GetDouble(), 0.5, 0.999);
        Assert.Equal("tiny-shapes", report.RootElement.GetProperty("quality_bundle").GetString());

        // + judge accuracy, (d) time, (d) memory, (a)/(d), (e) and (f) memory, DeepCache 20 and 50 steps
        Assert.Equal(7 + 3 + 2 + 2, report.RootElement.GetProperty("targets").GetArrayLength());

        // Time to an image: the six recipes, each what it says it ran.
        var images = report.RootElement.GetProperty("time_to_image").EnumerateArray().ToList();
        Assert.Equal(["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"], images.Select(i => i.GetProperty("label").GetString()![..3]));
        Assert.Equal([2, 2, 1, 1, 2, 1], images.Select(i => i.GetProperty("u_net_batch").GetInt32()));
        Assert.Equal([51, 20, 4, 4, 20, 4], images.Select(i => i.GetProperty("u_net_calls").GetInt32())); // PNDM: steps + 1
        Assert.Equal(["full", "full", "full", "tiny", "full", "tiny"], images.Select(i => i.GetProperty("decoder").GetString()));
        Assert.Equal([null, null, null, null, "2.5GB", "1.5GB"], images.Select(i => i.TryGetProperty("memory_budget", out var b) ? b.GetString() : null));
        // Each generation records its own peak, never above the process's.
        Assert.All(images, i => Assert.InRange(i.GetProperty("generation_peak_bytes").GetInt64(), 1, i.GetProperty("peak_rss_bytes").GetInt64()));
        Assert.All(images, i => Assert.True(i.GetProperty("image_s").GetDouble() >= i.GetProperty("denoise_s").GetDouble() && i.GetProperty("peak_rss_bytes").GetInt64() > 0));
        Assert.True(images[0].GetProperty("image_s").GetDouble() > images[3].GetProperty("image_s").GetDouble(), "4 LCM steps take less than 50 PNDM steps");
        // DeepCache: the two multi-step recipes at intervals 1 (their plain rows), 2 and 3, each against its own interval 1.
        var deepCache = report.RootElement.GetProperty("deep_cache").EnumerateArray().ToList();
        Assert.Equal(["(a)", "(a)", "(a)", "(b)", "(b)", "(b)"], deepCache.Select(r => r.GetProperty("image").GetProperty("label").GetString()![..3]));
        Assert.Equal([1, 2, 3, 1, 2, 3], deepCache.Select(r => r.GetProperty("interval").GetInt32()));
        foreach (var row in deepCache)
        {
            var image = row.GetProperty("image");
            int interval = row.GetProperty("interval").GetInt32(), calls = image.GetProperty("u_net_calls").GetInt32(), shallow = image.GetProperty("shallow_u_net_calls").GetInt32();
            var plain = images.Single(i => i.GetProperty("label").GetString() == image.GetProperty("label").GetString());
            Assert.Equal(plain.GetProperty("u_net_calls").GetInt32(), calls);
            if (interval == 1)
            {
                Assert.Equal(0, shallow);
                Assert.Equal(plain.GetProperty("image_s").GetDouble(), image.GetProperty("image_s").GetDouble());
                continue;
            }
            // Every interval-th step runs in full: about (interval − 1) / interval of the calls are shallow.
            Assert.InRange(shallow, calls * (interval - 1) / interval - 2 * interval, calls * (interval - 1) / interval + 2 * interval);
            Assert.Equal(plain.GetProperty("image_s").GetDouble() / image.GetProperty("image_s").GetDouble(), row.GetProperty("speedup_vs_interval1").GetDouble(), 9);
            // The same recipe with DeepCache on tiny-shapes: a different image than FP32's, yet not noise.
            Assert.InRange(image.GetProperty("quality").GetProperty("psnr_median").GetDouble(), 5, 60);
        }
        // Every row is judged; the few-step ones on the trained LCM model, at its 4 steps, with the row's decoder.
        Assert.All(images, i => Assert.Equal(6, i.GetProperty("quality").GetProperty("pairs").GetInt32()));
        Assert.Contains("lcm 4 steps, guidance 3, tiny decoder", images[3].GetProperty("quality").GetProperty("recipe").GetString());

        var findings = report.RootElement.GetProperty("findings").EnumerateArray().Select(f => f.GetProperty("group").GetString()).ToList();
        Assert.Equal(["threads", "optimization level", "memory", "VAE decoder"], findings.Distinct());
        Assert.Contains(report.RootElement.GetProperty("findings").EnumerateArray(), f => f.GetProperty("setting").GetString()!.StartsWith("INT8, whole"));

        string text = File.ReadAllText(md);
        Assert.Contains("](BENCHMARKS.svg)", text); // the chart beside the report, embedded in it
        Assert.Equal(6 + 2, System.Xml.Linq.XDocument.Load(Path.Combine(dir, "BENCHMARKS.svg")).Descendants()
            .Count(e => e.Name.LocalName == "g" && (string?)e.Attribute("class") == "bar"));
        Assert.Contains("| `int8_tome0.4` |", text);
        Assert.Contains("## Targets", text);
        Assert.Contains("## Time to a 512² image on this machine", text);
        Assert.Contains("| (d) = (c) with TAESD | `int8_tome0.4_b1` | lcm | 4 |", text);
        Assert.Contains("| (f) = (d) in 1.5 GB | `int8_tome0.4_b1` | lcm | 4 | 1 | tiny | 1.5GB |", text);
        Assert.Contains("## What else buys speed", text);
        Assert.Contains("## DeepCache: the multi-step recipes with cached deep features", text);
        Assert.Contains("judge (FP32) | PSNR dB | SSIM |", text);
        Assert.Contains("judge ", System.IO.File.ReadAllText(Path.Combine(dir, "BENCHMARKS.svg")));
        Assert.Contains("| (b) 20 DPM++ steps | 2 | 20 (", text);
        Assert.Contains("ONNX Runtime " + Runtime.OnnxSessionFactory.OrtVersion, text);
    }

    [Theory]
    [InlineData("--recipes", "a,g", "--recipes: unknown g")]
    [InlineData("--deep-cache-intervals", "1", "--deep-cache-intervals must be from 2 to 20")]
    [InlineData("--deep-cache-intervals", "2,x", "--deep-cache-intervals takes whole numbers or none")]
    public async Task BadRecipesAndIntervalsAreRefused(string option, string value, string message)
    {
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(["bench", "--fp32-bundle", Fixtures.TinySd, "--work", Fixtures.TempDirectory("bench-bad"), option, value], TextWriter.Null, stderr);
        Assert.Equal(CliApp.BadInput, code);
        Assert.Contains(message, stderr.ToString());
    }

    [Fact]
    public async Task UnknownVariantsAreRefused()
    {
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(["bench", "--fp32-bundle", Fixtures.TinySd, "--work", Fixtures.TempDirectory("bench-bad"), "--variants", "fp16"], TextWriter.Null, stderr);
        Assert.Equal(CliApp.BadInput, code);
        Assert.Contains("unknown fp16", stderr.ToString());
    }
}
