using System.Text;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Onnx;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Inference.Tests;

/// <summary>Opening bundles: what the real exports declare, and one clear error per way a bundle can be broken.</summary>
public class BundleTests
{
    [Fact]
    public void TheTinyBundleIsReadFromItsFiles()
    {
        var bundle = ModelBundle.Open(Fixtures.TinySd);
        Assert.Equal("sdref-tiny-sd", bundle.Name);
        Assert.Equal(32, bundle.UnetSampleSize);
        Assert.Equal(8, bundle.VaeScaleFactor);
        Assert.Equal(0.18215f, bundle.VaeScalingFactor);
        Assert.Equal((256, 256), (bundle.DefaultWidth, bundle.DefaultHeight));
        Assert.Null(bundle.FixedUnetBatch);
        Assert.NotNull(bundle.VaeEncoder);
        Assert.Equal("PNDMScheduler", bundle.Scheduler.ClassName);

        var sample = bundle.Unet.FindInput("sample")!;
        Assert.Equal(["batch_size", "num_channels", "height", "width"], sample.Dims.Select(d => d.Param));
        Assert.Equal(OnnxElementType.Int64, bundle.Unet.FindInput("timestep")!.ElementType);
        Assert.Equal(OnnxElementType.Int32, bundle.TextEncoder.FindInput("input_ids")!.ElementType);
        Assert.Equal(14, bundle.Unet.OpsetImports[""]);
        Assert.Empty(bundle.Unet.ExternalDataFiles);
    }

    [Fact]
    public void ExternalWeightsAreFoundAndTheFloatTimestepIsRead()
    {
        var info = OnnxModelInfo.Read(Path.Combine(Fixtures.TinySd, "unet-float-timestep", "model.onnx"));
        Assert.Equal(["weights.pb"], info.ExternalDataFiles);
        Assert.Equal(OnnxElementType.Float, info.FindInput("timestep")!.ElementType);
        Assert.Equal("batch", info.FindInput("timestep")!.Dims.Single().Param);
    }

    [Theory]
    [InlineData("model_index.json")]
    [InlineData("tokenizer/merges.txt")]
    [InlineData("text_encoder/model.onnx")]
    [InlineData("unet/model.onnx")]
    [InlineData("vae_decoder/model.onnx")]
    [InlineData("scheduler/scheduler_config.json")]
    public void AMissingFileIsNamed(string relative)
    {
        string dir = Fixtures.CopyTinySd();
        File.Delete(Path.Combine(dir, relative));
        var e = Assert.Throws<ModelBundleException>(() => ModelBundle.Open(dir));
        Assert.Contains(Path.Combine(dir, relative), e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void AMissingExternalWeightsFileIsNamed()
    {
        string dir = ModelTests.FloatTimestepBundle.Value;
        string copy = Fixtures.CopyTinySd();
        Directory.Delete(Path.Combine(copy, "unet"), true);
        Directory.CreateDirectory(Path.Combine(copy, "unet"));
        File.Copy(Path.Combine(dir, "unet", "model.onnx"), Path.Combine(copy, "unet", "model.onnx"));
        var e = Assert.Throws<ModelBundleException>(() => ModelBundle.Open(copy));
        Assert.Contains("weights.pb", e.Message);
        Assert.Contains("external data", e.Message);
    }

    [Theory]
    [InlineData(0)]       // empty file
    [InlineData(100_000)] // cut off mid-weights
    public void ATruncatedModelIsNamed(int keepBytes)
    {
        string dir = Fixtures.CopyTinySd();
        string path = Path.Combine(dir, "vae_decoder", "model.onnx");
        byte[] bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..keepBytes]);
        var e = Assert.Throws<ModelBundleException>(() => ModelBundle.Open(dir));
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void AWrongInputNameListsTheInputsTheModelHas()
    {
        string dir = Fixtures.CopyTinySd();
        string path = Path.Combine(dir, "unet", "model.onnx");
        // Same-length rename everywhere in the graph keeps the protobuf valid: the input is now "timestamp".
        File.WriteAllBytes(path, Replace(File.ReadAllBytes(path), "timestep", "timestam"));
        var e = Assert.Throws<ModelBundleException>(() => ModelBundle.Open(dir));
        Assert.Contains("has no input 'timestep'", e.Message);
        Assert.Contains("timestam", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void AnUnsupportedDtypeIsNamed()
    {
        string dir = Fixtures.CopyTinySd();
        string path = Path.Combine(dir, "text_encoder", "model.onnx");
        File.WriteAllBytes(path, TinyOnnx.Identity("input_ids", OnnxElementType.Float16, "last_hidden_state"));
        var e = Assert.Throws<ModelBundleException>(() => ModelBundle.Open(dir));
        Assert.Contains("input 'input_ids' is float16; expected int32 or int64", e.Message);
    }

    [Fact]
    public async Task AModelOrtCannotRunIsReportedByFileWhenLoading()
    {
        string dir = Fixtures.CopyTinySd();
        string path = Path.Combine(dir, "vae_decoder", "model.onnx");
        // Declares the right inputs and outputs but its node is an op that does not exist.
        File.WriteAllBytes(path, TinyOnnx.Identity("latent_sample", OnnxElementType.Float, "sample", rank: 4, opType: "NoSuchOp"));
        var e = await Assert.ThrowsAsync<ModelBundleException>(() =>
            StableDiffusionPipeline.LoadAsync(dir, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions }));
        Assert.Contains(path, e.Message);
        Assert.Contains("ONNX Runtime could not load it", e.Message);
    }

    [Fact]
    public async Task ADefaultSchedulerTheConfigCannotBuildIsABundleError()
    {
        var (dir, config) = await BundleWithSchedulerConfig(c => c.Replace("\"skip_prk_steps\": true", "\"skip_prk_steps\": false"));
        var e = await Assert.ThrowsAsync<ModelBundleException>(() =>
            StableDiffusionPipeline.LoadAsync(dir, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions }));
        Assert.Contains(config, e.Message);
        Assert.Contains("skip_prk_steps", e.Message);
    }

    [Fact]
    public async Task ASchedulerTheConfigCannotBuildIsRefusedPerRequest()
    {
        var (dir, _) = await BundleWithSchedulerConfig(c =>
            c.Replace("\"PNDMScheduler\"", "\"DDIMScheduler\"").Replace("\"skip_prk_steps\": true", "\"skip_prk_steps\": false"));
        using var pipeline = await StableDiffusionPipeline.LoadAsync(dir, new PipelineOptions { WarmUp = false, Session = TinyPipelineFixture.CachedSessions });
        Assert.Equal("ddim", pipeline.DefaultScheduler);
        Assert.DoesNotContain("pndm", pipeline.SupportedSchedulers);
        Assert.Equal(6, pipeline.SupportedSchedulers.Count); // the other five and lcm
        var e = await Assert.ThrowsAsync<InvalidGenerationRequestException>(() =>
            pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 2, Scheduler = "pndm" }));
        Assert.Equal("scheduler", e.ParamName);
        Assert.Contains("skip_prk_steps", e.Message);
        Assert.Equal(256, (await pipeline.GenerateAsync(new GenerationRequest { Prompt = "x", Steps = 2, Seed = 1 })).Width);
    }

    [Fact]
    public void ANonexistentDirectoryIsNamed()
    {
        var e = Assert.Throws<ModelBundleException>(() => ModelBundle.Open("/no/such/model"));
        Assert.Contains("/no/such/model", e.Message);
    }

    /// <summary>A bundle copy whose scheduler_config.json is edited as given.</summary>
    private static async Task<(string Dir, string Config)> BundleWithSchedulerConfig(Func<string, string> edit)
    {
        string dir = Fixtures.CopyTinySd();
        string config = Path.Combine(dir, "scheduler", "scheduler_config.json");
        await File.WriteAllTextAsync(config, edit(await File.ReadAllTextAsync(config)));
        return (dir, config);
    }

    private static byte[] Replace(byte[] data, string from, string to)
    {
        byte[] a = Encoding.ASCII.GetBytes(from), b = Encoding.ASCII.GetBytes(to);
        var result = (byte[])data.Clone();
        int count = 0;
        for (int i = 0; i <= result.Length - a.Length; i++)
            if (result.AsSpan(i, a.Length).SequenceEqual(a)) { b.CopyTo(result, i); count++; }
        Assert.True(count > 0);
        return result;
    }
}

/// <summary>Writes minimal ONNX models (one node) for tests that need a model with a particular declaration.</summary>
internal static class TinyOnnx
{
    public static byte[] Identity(string input, OnnxElementType type, string output, int rank = 2, string opType = "Identity")
    {
        var graph = new MemoryStream();
        var node = new MemoryStream();
        WriteString(node, 1, input);
        WriteString(node, 2, output);
        WriteString(node, 4, opType);
        WriteBytes(graph, 1, node.ToArray());
        WriteString(graph, 2, "g");
        WriteBytes(graph, 11, ValueInfo(input, type, rank));
        WriteBytes(graph, 12, ValueInfo(output, type, rank == 2 ? 3 : rank));

        var model = new MemoryStream();
        WriteVarintField(model, 1, 7); // ir_version
        var opset = new MemoryStream();
        WriteString(opset, 1, "");
        WriteVarintField(opset, 2, 14);
        WriteBytes(model, 8, opset.ToArray());
        WriteBytes(model, 7, graph.ToArray());
        return model.ToArray();
    }

    private static byte[] ValueInfo(string name, OnnxElementType type, int rank)
    {
        var shape = new MemoryStream();
        for (int i = 0; i < rank; i++)
        {
            var dim = new MemoryStream();
            WriteString(dim, 2, $"d{i}");
            WriteBytes(shape, 1, dim.ToArray());
        }
        var tensor = new MemoryStream();
        WriteVarintField(tensor, 1, (ulong)type);
        WriteBytes(tensor, 2, shape.ToArray());
        var typeProto = new MemoryStream();
        WriteBytes(typeProto, 1, tensor.ToArray());
        var vi = new MemoryStream();
        WriteString(vi, 1, name);
        WriteBytes(vi, 2, typeProto.ToArray());
        return vi.ToArray();
    }

    private static void WriteVarint(Stream s, ulong v)
    {
        while (v >= 0x80) { s.WriteByte((byte)(v | 0x80)); v >>= 7; }
        s.WriteByte((byte)v);
    }

    private static void WriteVarintField(Stream s, int field, ulong value) { WriteVarint(s, (ulong)(field << 3)); WriteVarint(s, value); }
    private static void WriteBytes(Stream s, int field, byte[] bytes) { WriteVarint(s, (ulong)(field << 3 | 2)); WriteVarint(s, (ulong)bytes.Length); s.Write(bytes); }
    private static void WriteString(Stream s, int field, string value) => WriteBytes(s, field, Encoding.UTF8.GetBytes(value));
}
