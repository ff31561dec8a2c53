using Microsoft.ML.OnnxRuntime;
using Onnx;
using SdFunctions.Cli;
using SdFunctions.Cli.Bench;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;
using SdFunctions.Inference.Runtime;
using SdFunctions.Optimizer;
using SdFunctions.Optimizer.Quantization;
using Xunit.Abstractions;

namespace SdFunctions.Inference.Tests;

/// <summary>The tiny bundle with only its text encoder in int8 (made once through the CLI), so that any difference is the encoder's.</summary>
public sealed class Int8TextEncoderBundle
{
    public string Dir { get; } = Fixtures.TempDirectory("sdf-int8-text-encoder");
    public OptimizeManifest Manifest { get; }

    public Int8TextEncoderBundle()
    {
        var stderr = new StringWriter();
        int code = CliApp.RunAsync(["optimize", "--model", Fixtures.TinySd, "--out", Dir, "--quantize-text-encoder"], TextWriter.Null, stderr).GetAwaiter().GetResult();
        Assert.True(code == 0, stderr.ToString());
        Manifest = System.Text.Json.JsonSerializer.Deserialize<OptimizeManifest>(File.ReadAllText(Path.Combine(Dir, OptimizeManifest.FileName)), OptimizeManifest.Json)!;
    }
}

/// <summary>sdf optimize --quantize-text-encoder: int8 weights (linear layers per channel, token embedding per row), float activations.</summary>
public class TextEncoderQuantizationTests(Int8TextEncoderBundle bundle, ITestOutputHelper output) : IClassFixture<Int8TextEncoderBundle>
{
    private static readonly string[] Prompts = ["", "a photo of an astronaut riding a horse on mars", "a watercolor of a red barn in the snow, soft light, by a famous painter, trending"];

    private static GraphProto Graph(string bundleDir) => ModelProto.Parser.ParseFrom(File.ReadAllBytes(Path.Combine(bundleDir, "text_encoder", "model.onnx"))).Graph;

    private static long Elements(TensorProto t) => t.Dims.Aggregate(1L, (a, b) => a * b);

    [Fact]
    public void EveryLinearWeightAndTheTokenEmbeddingAreInt8()
    {
        var source = Graph(Fixtures.TinySd);
        var sourceInitializers = source.Initializer.ToDictionary(i => i.Name);
        int linear = source.Node.Count(n => n.OpType == "MatMul" && sourceInitializers.TryGetValue(n.Input[1], out var w) && w.Dims.Count == 2);
        var report = bundle.Manifest.TextEncoderQuantization!;
        Assert.Equal(linear, report.QuantizedNodes["MatMul"]);
        Assert.Equal(1, report.QuantizedNodes["Gather"]); // the token embedding; the 77-row position embedding stays float
        output.WriteLine($"tiny text encoder weights: {report.WeightBytesBefore / 1e6:F2} MB → {report.WeightBytesAfter / 1e6:F2} MB");
        Assert.InRange((double)report.WeightBytesAfter / report.WeightBytesBefore, 0.2, 0.3); // int8 + scales: a quarter and a little

        var graph = Graph(bundle.Dir);
        var initializers = graph.Initializer.ToDictionary(i => i.Name);
        var producers = graph.Node.SelectMany(n => n.Output.Select(o => (o, n))).ToDictionary(p => p.o, p => p.n);
        foreach (var matmul in graph.Node.Where(n => n.OpType == "MatMul" && producers.TryGetValue(n.Input[1], out var p) && p.OpType == "DequantizeLinear"))
            Assert.Equal((int)TensorProto.Types.DataType.Int8, initializers[producers[matmul.Input[1]].Input[0]].DataType);
        Assert.Equal(linear, graph.Node.Count(n => n.OpType == "MatMul" && producers.TryGetValue(n.Input[1], out var p) && p.OpType == "DequantizeLinear"));
        Assert.DoesNotContain(graph.Initializer, i => i.DataType == (int)TensorProto.Types.DataType.Float && Elements(i) >= TextEncoderQuantizer.MinTableElements);
        Assert.DoesNotContain(graph.Node, n => n.OpType == "QuantizeLinear"); // weight-only: activations stay float
        Assert.Equal(Graph(Fixtures.TinySd).Output.Select(o => o.Name), graph.Output.Select(o => o.Name));
    }

    [Fact]
    public async Task TheEmbeddingsStayCloseToFloatAndSoDoesTheImage()
    {
        using var fp32 = await StableDiffusionPipeline.LoadAsync(Fixtures.TinySd, new PipelineOptions { WarmUp = false });
        using var int8 = await StableDiffusionPipeline.LoadAsync(bundle.Dir, new PipelineOptions { WarmUp = false });
        foreach (string prompt in Prompts)
        {
            float[] floatEmbedding = await fp32.EncodePromptAsync(prompt), int8Embedding = await int8.EncodePromptAsync(prompt);
            double error = Close.RelativeL2(floatEmbedding, int8Embedding);
            output.WriteLine($"'{prompt}': embedding relative L2 {error:E2}");
            Assert.InRange(error, 1e-4, 0.05); // measured 1.6–3.2 % (random weights): really quantized, within 5 %
        }

        var request = new GenerationRequest { Prompt = Prompts[1], NegativePrompt = "blurry", Steps = 20, Seed = 7, Scheduler = "dpmpp-2m" };
        var expected = await fp32.GenerateAsync(request);
        var actual = await int8.GenerateAsync(request);
        double psnr = ImageQuality.Psnr(expected.Rgb, actual.Rgb);
        output.WriteLine($"int8 text encoder vs float, 20 DPM++ steps, seed 7: PSNR {psnr:F1} dB, final latents rel L2 {Close.RelativeL2(expected.Latents, actual.Latents):E2}");
        Assert.InRange(psnr, 30, 200);
    }

    [Fact]
    public async Task OnnxRuntimeKeepsTheWeightsInt8WhenItOptimizesTheGraph()
    {
        // ORT's constant folding could turn DequantizeLinear(int8 constant) back into a float constant: resident memory would be float again.
        string cache = Fixtures.TempDirectory("sdf-te-cache");
        using (await StableDiffusionPipeline.LoadAsync(bundle.Dir, new PipelineOptions { WarmUp = false, Session = new SessionSettings { OptimizedModelCacheDirectory = cache } })) { }
        string optimized = Directory.EnumerateFiles(cache, "*.onnx", SearchOption.AllDirectories).Single(f => f.Contains("text", StringComparison.OrdinalIgnoreCase));
        var model = await ModelFiles.ReadAsync(optimized, default);
        long floatElements = model.Graph.Initializer.Where(i => i.DataType == (int)TensorProto.Types.DataType.Float).Sum(Elements);
        long int8Elements = model.Graph.Initializer.Where(i => i.DataType == (int)TensorProto.Types.DataType.Int8).Sum(Elements);
        output.WriteLine($"ORT's optimized text encoder: {int8Elements} int8 and {floatElements} float weight elements");
        Assert.True(int8Elements > 4 * floatElements, $"{int8Elements} int8 against {floatElements} float elements");
    }

    [Fact]
    public async Task TheRealSizeTextEncoderShrinksToAQuarter()
    {
        // SD 1.5's CLIP ViT-L/14 text encoder graph with random weights: what the 0.49 GB becomes, and that it still runs close to float.
        string graphs = Path.Combine(Fixtures.Root, "sd15-graphs", "text_encoder");
        string dir = Fixtures.TempDirectory("sdf-sd15-text-encoder");
        Directory.CreateDirectory(dir);
        await RandomWeightBundle.WriteWeightsAsync(Path.Combine(graphs, "manifest.json"), dir, default);
        File.Copy(Path.Combine(graphs, "model.onnx"), Path.Combine(dir, "model.onnx"));
        float[] expected = RunEncoder(dir);

        var result = await TextEncoderQuantizer.QuantizeAsync(dir, default);
        output.WriteLine($"SD 1.5 text encoder weights: {result.WeightBytesBefore / 1e9:F3} GB → {result.WeightBytesAfter / 1e9:F3} GB; " +
            $"data file {new FileInfo(Path.Combine(dir, ModelFiles.DataFileName)).Length / 1e9:F3} GB");
        Assert.InRange(result.WeightBytesBefore, 0.45e9, 0.5e9);
        Assert.InRange(result.WeightBytesAfter, 0.1e9, 0.13e9);
        Assert.Equal(72, result.QuantizedNodes["MatMul"]); // 12 layers × (q, k, v, out, fc1, fc2)
        double error = Close.RelativeL2(expected, RunEncoder(dir));
        output.WriteLine($"SD 1.5 text encoder (random weights), int8 vs float: last_hidden_state relative L2 {error:E2}");
        Assert.InRange(error, 1e-4, 0.05); // measured 2.8 % (random normal(0, 0.02) weights, 12 layers)
    }

    /// <summary>last_hidden_state for one prompt's tokens (the real CLIP vocabulary of the tiny bundle).</summary>
    private static float[] RunEncoder(string dir)
    {
        var tokenizer = Inference.Bundle.ModelBundle.Open(Fixtures.TinySd).Tokenizer;
        int[] ids = tokenizer.Encode(Prompts[2]).Ids;
        using var session = new InferenceSession(Path.Combine(dir, "model.onnx"));
        var type = session.InputMetadata["input_ids"].ElementDataType;
        using var input = type == Microsoft.ML.OnnxRuntime.Tensors.TensorElementType.Int64
            ? OrtValue.CreateTensorValueFromMemory(ids.Select(i => (long)i).ToArray(), [1, ids.Length])
            : OrtValue.CreateTensorValueFromMemory(ids, [1, ids.Length]);
        using var outputs = session.Run(new RunOptions(), ["input_ids"], [input], ["last_hidden_state"]);
        return outputs[0].GetTensorDataAsSpan<float>().ToArray();
    }
}
