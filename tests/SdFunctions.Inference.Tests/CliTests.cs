using System.Runtime.InteropServices;
using System.Text.Json;
using SdFunctions.Cli;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static SdFunctions.Inference.Tests.CliRun;

namespace SdFunctions.Inference.Tests;

/// <summary>The sdf command line, run in-process with captured output.</summary>
public class CliTests
{
    private static string TempPng() => Fixtures.TempDirectory("out") + ".png";

    [Fact]
    public async Task GenerateWithLcmAndInjectedStepNoiseWritesTheReferenceImage()
    {
        string png = TempPng();
        var (code, _, err) = await Run("generate", "--model", Fixtures.TinyLcm, "--prompt", "a drawing of a green pokemon with red eyes",
            "--latents", Path.Combine(Fixtures.Reference, "lcm", "pipe__initial_latents.bin"),
            "--step-noise", Path.Combine(Fixtures.Reference, "lcm", "pipe__step_noise.bin"), "--out", png, "--cache", TinyPipelineFixture.SharedCache);
        Assert.True(code == 0, err);
        Assert.Contains("4 steps (lcm, 4 UNet calls at batch 1, guidance 8.5 guidance-embedding)", err); // the LCM model's defaults
        Assert.True(Close.MaxLevels(Fixtures.Pixels(Path.Combine(Fixtures.Reference, "lcm_pipeline.png")), Fixtures.Pixels(png)) <= 1,
            "the PNG differs from diffusers' by more than one level");
    }

    [Theory]
    [InlineData("--decoder", "tiny", "decoder")] // tiny-sd has no TAESD
    [InlineData("--step-noise", "BADSIZE", "--step-noise")]
    [InlineData("--negative-prompt", "blurry", "negative prompt")]
    public async Task LcmAndDecoderMistakesAreOneLineUsageErrors(string option, string value, string expected)
    {
        string model = option == "--negative-prompt" ? Fixtures.TinyLcm : Fixtures.TinySd;
        if (value == "BADSIZE")
        {
            value = Fixtures.TempDirectory("noise") + ".bin";
            Directory.CreateDirectory(Path.GetDirectoryName(value)!);
            File.WriteAllBytes(value, new byte[4 * 100]);
        }
        var (code, _, err) = await Run("generate", "--model", model, "--prompt", "x", "--scheduler", "lcm", option, value, "--out", TempPng(),
            "--cache", TinyPipelineFixture.SharedCache);
        Assert.Equal(CliApp.BadInput, code);
        Assert.Contains(expected, err);
        Assert.Single(err.Trim().Split('\n'));
    }

    [Fact]
    public async Task ImageToImageWithReferenceNoiseWritesDiffusersImage()
    {
        string png = TempPng();
        var (code, _, err) = await Run("generate", "--model", Fixtures.TinySdWithParameterEncoder, "--prompt", "a drawing of a green pokemon with red eyes",
            "--scheduler", "ddim", "--steps", "10", "--init-image", Path.Combine(Fixtures.Reference, "img2img_init_image.png"), "--strength", "0.8",
            "--encoder-noise", Fixtures.FileOf("img2img", "ddim_s08/encoder_eps"), "--latents", Fixtures.FileOf("img2img", "ddim_s08/noise"),
            "--out", png, "--cache", TinyPipelineFixture.SharedCache);
        Assert.True(code == 0, err);
        Assert.Contains("10 steps (ddim, the last 8 run from the image, 8 UNet calls", err);
        Assert.Contains("at strength 0.8", err);
        Assert.True(Close.MaxLevels(Fixtures.Pixels(Path.Combine(Fixtures.Reference, "img2img_ddim_s08.png")), Fixtures.Pixels(png)) <= 1,
            "the PNG differs from diffusers' by more than one level");

        var (refused, _, why) = await Run("generate", "--model", Fixtures.TinySd, "--prompt", "x", "--strength", "0.5", "--out", TempPng());
        Assert.Equal(CliApp.BadInput, refused);
        Assert.Contains("--strength needs --init-image", why);
        var (tooLow, _, lowWhy) = await Run("generate", "--model", Fixtures.TinySdWithParameterEncoder, "--prompt", "x", "--steps", "4",
            "--init-image", Path.Combine(Fixtures.Reference, "img2img_init_image.png"), "--strength", "0.1", "--out", TempPng(), "--cache", TinyPipelineFixture.SharedCache);
        Assert.Equal(CliApp.BadInput, tooLow);
        Assert.Contains("--strength", lowWhy);
    }

    [Fact]
    public async Task GenerateFromReferenceLatentsWritesTheReferenceImage()
    {
        string latents = Path.Combine(Fixtures.Reference, "pipeline", "ddim__initial_latents.bin");
        string png = TempPng();
        var (code, _, err) = await Run("generate", "--model", Fixtures.TinySd, "--prompt", "a drawing of a green pokemon with red eyes",
            "--steps", "10", "--guidance", "7.5", "--scheduler", "ddim", "--latents", latents, "--out", png, "--cache", TinyPipelineFixture.SharedCache);
        Assert.True(code == 0, err);
        Assert.Contains("10 steps (ddim, 10 UNet calls at batch 2, guidance 7.5 cfg)", err);
        Assert.Contains("decode (full)", err);
        Assert.Contains("load ", err);
        Assert.Contains("decode ", err);

        using var ours = Image.Load<Rgb24>(png);
        using var reference = Image.Load<Rgb24>(Path.Combine(Fixtures.Reference, "pipeline_ddim.png"));
        var a = new byte[256 * 256 * 3];
        var b = new byte[a.Length];
        ours.CopyPixelDataTo(a);
        reference.CopyPixelDataTo(b);
        Assert.True(a.Zip(b, (x, y) => Math.Abs(x - y)).Max() <= 1);
    }

    [Fact]
    public async Task GenerateWithASeedIsRepeatableAndReportsTheSeed()
    {
        string first = TempPng(), second = TempPng();
        string[] common = ["generate", "--model", Fixtures.TinySd, "--prompt", "a cat", "--steps", "3", "--seed", "77", "--cache", TinyPipelineFixture.SharedCache, "--out"];
        var r1 = await Run([.. common, first]);
        var r2 = await Run([.. common, second]);
        Assert.Equal(0, r1.Code);
        Assert.Equal(0, r2.Code);
        Assert.Contains("seed 77", r1.Err);
        Assert.Equal(await File.ReadAllBytesAsync(first), await File.ReadAllBytesAsync(second));
    }

    [Fact]
    public async Task AMemoryBudgetDecodesInTilesAndThePeakIsReported()
    {
        var r = await Run(["generate", "--model", Fixtures.TinySd, "--prompt", "a cat", "--steps", "2", "--seed", "77", "--memory-budget", "1KB",
            "--cache", TinyPipelineFixture.SharedCache, "--out", TempPng()]);
        Assert.Equal(0, r.Code);
        Assert.Contains("decode (full, tiles of 64 px)", r.Err); // 1 KB cannot be met: the smallest tiles
        Assert.Matches(@"peak memory \d+\.\d\d GB \(budget 0\.00 GB\)", r.Err);
    }

    [Fact]
    public async Task TokenizePrintsTheIdsAsJson()
    {
        var (code, stdout, _) = await Run("tokenize", "--model", Fixtures.TinySd, "a drawing of a green pokemon with red eyes");
        Assert.Equal(0, code);
        int[] ids = JsonSerializer.Deserialize<int[]>(stdout)!;
        var expected = Fixtures.Index("tokenizer").GetProperty("items")[0].GetProperty("ids_hf_slow_ftfy").EnumerateArray().Select(e => e.GetInt32());
        Assert.Equal(expected, ids);
    }

    public static TheoryData<string[], string> BadInvocations() => new()
    {
        { ["generate", "--prompt", "x", "--out", "x.png", "--scheduler", "heun", "--model", Fixtures.TinySd], "Unknown scheduler 'heun'" },
        { ["generate", "--prompt", "x", "--out", "x.png", "--steps", "0", "--model", Fixtures.TinySd], "--steps: Between 1 and 150." },
        { ["generate", "--prompt", "x", "--out", "x.png", "--steps", "151", "--model", Fixtures.TinySd], "--steps: Between 1 and 150." },
        { ["generate", "--prompt", "x", "--out", "x.png", "--guidance", "31", "--model", Fixtures.TinySd], "--guidance: Between 0 and 30." },
        { ["generate", "--prompt", "x", "--out", "x.png", "--width", "300", "--model", Fixtures.TinySd], "multiples of 64" },
        { ["generate", "--prompt", "x", "--out", "x.png", "--model", "/no/such/dir"], "/no/such/dir" },
        { ["generate", "--out", "x.png", "--model", Fixtures.TinySd], "--prompt" },
        { ["generate", "--prompt", "x", "--out", "x.png", "--steps", "many"], "many" },
        { ["generate", "--prompt", "x", "--out", "/no/such/dir/x.png", "--model", Fixtures.TinySd], "does not exist" },
        { ["generate", "--prompt", "x", "--out", "x.png", "--latents", "/no/such/latents.bin", "--model", Fixtures.TinySd], "latents" },
        { ["tokenize", "--model", "/no/such/dir", "hello"], "/no/such/dir" },
        { ["paint"], "paint" },
    };

    [Theory, MemberData(nameof(BadInvocations))]
    public async Task BadInputGivesOneLineAndANonZeroExit(string[] args, string expected)
    {
        var (code, _, err) = await Run(args);
        Assert.NotEqual(0, code);
        Assert.Contains(expected, err);
        Assert.Single(err.TrimEnd().Split('\n'));
        Assert.StartsWith("sdf: ", err);
    }

    public static TheoryData<string, string[], int, string> MistakesInTheUsersWords()
    {
        string folder = Directory.CreateDirectory(Fixtures.TempDirectory("out-folder")).FullName;
        string folderWithAFile = Directory.CreateDirectory(Fixtures.TempDirectory("full-folder")).FullName;
        File.WriteAllText(Path.Combine(folderWithAFile, "keep.txt"), "x");
        string nanLatents = Fixtures.TempDirectory("nan") + ".bin";
        var values = new float[4 * 32 * 32];
        values[7] = float.NaN;
        File.WriteAllBytes(nanLatents, MemoryMarshal.AsBytes(values.AsSpan()).ToArray());
        string[] Generate(params string[] more) => ["generate", "--prompt", "x", "--model", Fixtures.TinySd, "--cache", TinyPipelineFixture.SharedCache, .. more];
        return new()
        {
            { "huge size is bounded before any work", Generate("--width", "4096", "--height", "4096", "--out", TempPng()), CliApp.BadInput, "--width/--height: 4096×4096 needs about" },
            { "negative seed", Generate("--seed", "-1", "--out", TempPng()), CliApp.BadInput, "--seed: Between 0 and 9007199254740991." },
            { "seed not a number", Generate("--seed", "abc", "--out", TempPng()), CliApp.BadInput, "as a whole number" },
            { "guidance out of range", Generate("--guidance", "31", "--out", TempPng()), CliApp.BadInput, "--guidance: Between 0 and 30." },
            { "karras with ddim", Generate("--karras", "--scheduler", "ddim", "--out", TempPng()), CliApp.BadInput, "--karras: ddim has no Karras sigmas" },
            { "karras with pndm", Generate("--karras", "--out", TempPng()), CliApp.BadInput, "--karras: pndm has no Karras sigmas" },
            { "karras with lcm", Generate("--karras", "--scheduler", "lcm", "--out", TempPng()), CliApp.BadInput, "--karras: lcm has no Karras sigmas" },
            { "out is a folder", Generate("--out", folder), CliApp.BadInput, "is a folder" },
            { "out cannot be written", Generate("--out", "/proc/sdf-test.png"), CliApp.BadInput, "--out: /proc/sdf-test.png cannot be written" },
            { "non-finite latents", Generate("--latents", nanLatents, "--out", TempPng()), CliApp.BadInput, "holds a non-finite value (NaN) at float 7" },
            { "deep cache on a model without its graphs", Generate("--deep-cache-interval", "3", "--out", TempPng()), CliApp.BadInput, "or leave --deep-cache-interval at 1" }, // the option, not the API's cacheInterval
            { "misspelled option", Generate("--stepz", "3", "--out", TempPng()), CliApp.BadInput, "sdf: unknown option --stepz; did you mean --steps? (see sdf --help)" },
            { "optimize into a full folder", ["optimize", "--model", Fixtures.TinySd, "--out", folderWithAFile], CliApp.Failed, "sdf: --out: " },
            { "deep cache interval out of range", Generate("--deep-cache-interval", "0", "--out", TempPng()), CliApp.BadInput, "--deep-cache-interval: From 1 (off) to 20." },
            { "memory budget without a size", Generate("--memory-budget", "lots", "--out", TempPng()), CliApp.BadInput, "--memory-budget: 'lots' is not a positive size" },
            { "deep cache branch past the UNet", ["optimize", "--model", Fixtures.TinySd, "--out", Fixtures.TempDirectory("opt"), "--deep-cache", "--deep-cache-branch", "12"], CliApp.BadInput, "--deep-cache-branch must be from 0 to 11" },
            { "unknown quantization", ["optimize", "--model", Fixtures.TinySd, "--out", Fixtures.TempDirectory("opt"), "--quantize", "int4"], CliApp.BadInput, "'int4'" },
        };
    }

    [Theory, MemberData(nameof(MistakesInTheUsersWords))]
    public async Task MistakesAreOneLineInTheUsersWords(string mistake, string[] args, int exitCode, string expected)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var (code, _, err) = await Run(args);
        Assert.True(code == exitCode, $"{mistake}: exit {code}, {err}");
        Assert.Contains(expected, err);
        Assert.Single(err.TrimEnd().Split('\n'));
        foreach (string internals in new[] { "(Parameter", "System.", "`1", "`2", "\t", "   at " }) Assert.DoesNotContain(internals, err);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), $"{mistake}: refused only after {watch.Elapsed}");
    }

    [Fact]
    public async Task AnOnnxRuntimeFailureWhileRunningIsOneLineAndExitCode1()
    {
        // A VAE decoder whose last node reshapes its image to 7 values: the graph loads (its sizes are symbolic), and
        // ONNX Runtime fails inside Run, as an allocation it cannot make does.
        string bundle = Fixtures.CopyTinySd();
        string path = Path.Combine(bundle, "vae_decoder", "model.onnx");
        var vae = await SdFunctions.Optimizer.ModelFiles.ReadAsync(path, default);
        string output = vae.Graph.Output[0].Name;
        foreach (var node in vae.Graph.Node)
            for (int i = 0; i < node.Output.Count; i++)
                if (node.Output[i] == output) node.Output[i] = output + "_before";
        vae.Graph.Initializer.Add(new global::Onnx.TensorProto { Name = "seven", DataType = (int)global::Onnx.TensorProto.Types.DataType.Int64, Dims = { 1 }, Int64Data = { 7 } });
        vae.Graph.Node.Add(new global::Onnx.NodeProto { OpType = "Reshape", Input = { output + "_before", "seven" }, Output = { output }, Name = "broken_reshape" });
        File.Delete(path);
        await File.WriteAllBytesAsync(path, Google.Protobuf.MessageExtensions.ToByteArray(vae));

        var (code, _, err) = await Run("generate", "--prompt", "x", "--steps", "1", "--model", bundle, "--out", TempPng());
        Assert.True(code == CliApp.Failed, err);
        string error = Assert.Single(err.TrimEnd().Split('\n'), l => l.StartsWith("sdf:")); // after the progress lines
        Assert.StartsWith("sdf: ONNX Runtime could not run the model: ", error);
        Assert.DoesNotContain("   at ", err);
    }

    [Fact]
    public async Task ABrokenVocabularyIsNamedWithoutDotNetTypes()
    {
        string bundle = Fixtures.CopyTinySd();
        await File.WriteAllTextAsync(Path.Combine(bundle, "tokenizer", "vocab.json"), """["not", "a", "vocabulary"]""");
        var (code, _, err) = await Run("tokenize", "--model", bundle, "hello");
        Assert.True(code == CliApp.Failed, err);
        Assert.Contains("not a CLIP vocabulary (a JSON object of token → whole-number id)", err);
        Assert.DoesNotContain("Dictionary", err);
    }

    /// <summary>The README's first command, as a newcomer runs it: the built sdf, another working directory, no --model.</summary>
    [Fact]
    public async Task TheBundledModelIsTheDefaultFromAnyWorkingDirectoryAndDrawsTheCaption()
    {
        string dir = Fixtures.TempDirectory("cwd");
        Directory.CreateDirectory(dir);
        var start = new System.Diagnostics.ProcessStartInfo(Path.Combine(AppContext.BaseDirectory, "sdf"), ["generate", "--prompt", "a red square on a white background", "--seed", "2", "--out", "square.png"])
        {
            WorkingDirectory = dir, RedirectStandardError = true, RedirectStandardOutput = true,
        };
        start.Environment.Remove("SDF_MODEL");
        using var process = System.Diagnostics.Process.Start(start)!;
        string err = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.True(process.ExitCode == 0, err);
        Assert.Contains("guidance 3 cfg", err); // the bundled model's card
        var verdict = Quality.ShapeJudge.Judge(Fixtures.Pixels(Path.Combine(dir, "square.png")), 64, 64);
        Assert.True(verdict.Matches(new Quality.ShapesCaption("red", "square", "white")), $"read as a {verdict.Colour} {verdict.Kind} on {verdict.Background}");
    }

    [Fact]
    public async Task RedirectedProgressIsPlainLinesAndPndmShowsTheStepsAsked()
    {
        string png = TempPng();
        var (code, _, err) = await Run("generate", "--prompt", "x", "--model", Fixtures.TinySd, "--steps", "10", "--seed", "1", "--out", png,
            "--cache", TinyPipelineFixture.SharedCache);
        Assert.True(code == 0, err);
        Assert.DoesNotContain("\r", err);
        var lines = err.TrimEnd().Split('\n');
        Assert.StartsWith("iteration 11/11 (10 steps) ", lines[^3]);
        Assert.Contains("10 steps (pndm, 11 iterations: its first step evaluates the UNet twice", lines[^2]);
        Assert.StartsWith($"wrote {png} (", lines[^1]);
        Assert.True(lines.Length <= 13, $"one line per tenth of the run, not per step: {lines.Length} lines");
    }

    [Fact]
    public async Task ACanceledOptimizeLeavesNothingAndCanBeRerun()
    {
        string output = Fixtures.TempDirectory("opt-canceled");
        Directory.CreateDirectory(Path.GetDirectoryName(output)!);
        string[] args = ["optimize", "--model", Fixtures.TinySd, "--out", output, "--quantize", "int8", "--calibration-steps", "20"];
        using var cancel = new CancellationTokenSource();
        var stderr = new SharedWriter(); // read below while the run writes it
        var run = CliApp.RunAsync(args, new SharedWriter(), stderr, cancel.Token);
        while (!stderr.ToString().Contains("calibrat") && !run.IsCompleted) await Task.Delay(20); // well into the run
        await cancel.CancelAsync();
        Assert.Equal(CliApp.Canceled, await run);
        Assert.False(Directory.Exists(output));
        Assert.Empty(Directory.GetDirectories(Path.GetDirectoryName(output)!, Path.GetFileName(output) + "*"));

        var (code, _, err) = await Run(args);
        Assert.True(code == 0, err);
        Assert.True(File.Exists(Path.Combine(output, "sdfunctions-optimize.json")));
    }

    [Fact]
    public async Task GivenLatentsNoSeedIsPrinted()
    {
        string latents = Path.Combine(Fixtures.Reference, "pipeline", "ddim__initial_latents.bin");
        var (code, _, err) = await Run("generate", "--prompt", "x", "--model", Fixtures.TinySd, "--scheduler", "ddim", "--steps", "2", "--latents", latents,
            "--out", TempPng(), "--cache", TinyPipelineFixture.SharedCache);
        Assert.True(code == 0, err);
        Assert.Contains($"latents from {latents}", err);
        Assert.DoesNotContain("seed", err.TrimEnd().Split('\n')[^1]);
    }

    [Fact]
    public async Task LatentsOfTheWrongSizeAreRejected()
    {
        string latents = Fixtures.TempDirectory("latents") + ".bin";
        await File.WriteAllBytesAsync(latents, MemoryMarshal.AsBytes(new float[100].AsSpan()).ToArray());
        var (code, _, err) = await Run("generate", "--model", Fixtures.TinySd, "--prompt", "x", "--latents", latents, "--out", TempPng(),
            "--cache", TinyPipelineFixture.SharedCache);
        Assert.Equal(CliApp.BadInput, code);
        Assert.Contains("Initial latents must hold [1, 4, 32, 32] = 4096 floats; got 100", err);
    }
}

public class OptimizeCliTests
{
    [Fact]
    public async Task OptimizeWritesABundleAndReportsWhatItDid()
    {
        string output = Fixtures.TempDirectory("sdf-cli-optimized");
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(["optimize", "--model", Fixtures.TinySd, "--out", output, "--tome-ratio", "0.5",
            "--tome-max-downsample", "2", "--tome-merge", "attn,mlp", "--tome-seed", "3"], new StringWriter(), stderr);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("token merging: 10 blocks", stderr.ToString());
        var options = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(output, "sdfunctions-optimize.json"))).RootElement.GetProperty("options");
        Assert.Equal(["attn", "mlp"], options.GetProperty("tomeMerge").EnumerateArray().Select(e => e.GetString()));
        Assert.Equal(3, options.GetProperty("tomeSeed").GetInt32());
        Assert.True(File.Exists(Path.Combine(output, "sdfunctions-optimize.json")));

        var again = new StringWriter();
        Assert.Equal(CliApp.Failed, await CliApp.RunAsync(["optimize", "--model", Fixtures.TinySd, "--out", output], new StringWriter(), again));
        Assert.Contains("not empty", again.ToString());

        var bad = new StringWriter();
        Assert.Equal(CliApp.BadInput, await CliApp.RunAsync(["optimize", "--model", Fixtures.TinySd, "--out", Fixtures.TempDirectory("y"), "--tome-ratio", "2"], new StringWriter(), bad));
        Assert.StartsWith("sdf: ", bad.ToString());

        var badMerge = new StringWriter();
        Assert.Equal(CliApp.BadInput, await CliApp.RunAsync(["optimize", "--model", Fixtures.TinySd, "--out", Fixtures.TempDirectory("y"), "--tome-ratio", "0.5", "--tome-merge", "attn,norm"], new StringWriter(), badMerge));
        Assert.Contains("'norm' is not one of attn, crossattn, mlp", badMerge.ToString());
    }

    [Fact]
    public async Task OptimizeQuantizesWithTheChosenPresetAndPrompts()
    {
        string prompts = Fixtures.TempDirectory("sdf-cli-prompts") + ".txt";
        Directory.CreateDirectory(Path.GetDirectoryName(prompts)!);
        await File.WriteAllTextAsync(prompts, "a red barn\n");
        string output = Fixtures.TempDirectory("sdf-cli-int8");
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(["optimize", "--model", Fixtures.TinySd, "--out", output, "--quantize", "int8",
            "--quantize-preset", "aggressive", "--calibration", prompts, "--calibration-steps", "2"], new StringWriter(), stderr);
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("integer kernels: ", stderr.ToString());
        var manifest = System.Text.Json.JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(output, "sdfunctions-optimize.json"))).RootElement;
        Assert.Equal("aggressive", manifest.GetProperty("quantization").GetProperty("preset").GetString());
        Assert.Equal(1, manifest.GetProperty("quantization").GetProperty("calibrationPrompts").GetInt32());

        var bad = new StringWriter();
        Assert.Equal(CliApp.BadInput, await CliApp.RunAsync(["optimize", "--out", Fixtures.TempDirectory("z"), "--quantize", "int4"], new StringWriter(), bad));
        Assert.Contains("int4", bad.ToString());
    }
}
