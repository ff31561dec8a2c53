using System.CommandLine;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Cli.Bench;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Quality;
using SdFunctions.Inference.Runtime;
using SdFunctions.Inference.Schedulers;
using SdFunctions.Optimizer;
using SdFunctions.Optimizer.Quantization;

namespace SdFunctions.Cli;

/// <summary>
/// The <c>sdf</c> command line: <c>generate</c> an image, <c>decode</c> saved latents, <c>tokenize</c> a prompt, <c>optimize</c> a bundle,
/// <c>evaluate</c> one bundle or recipe against another and <c>bench</c> the variants at full size (<c>bench-probe</c> is bench's own child process).
/// Exit codes: 0 done, 1 the model or the run failed, 2 bad usage or input, 130 canceled.
/// </summary>
public static partial class CliApp
{
    public const int Ok = 0, Failed = 1, BadInput = 2, Canceled = 130;

    /// <summary>The model used when --model is not given: $SDF_MODEL, else the bundled tiny-shapes model.</summary>
    public static string DefaultModel => Environment.GetEnvironmentVariable("SDF_MODEL") is { Length: > 0 } m ? m : BundledModel;

    /// <summary>
    /// The trained tiny-shapes bundle (shared/models/tiny-shapes), copied beside the tool when it is built, so the default works
    /// from any working directory and with nothing beside the checkout.
    /// </summary>
    public static string BundledModel => Path.Combine(AppContext.BaseDirectory, "models", "tiny-shapes");

    // The option a user typed for each request parameter the pipeline names in its refusals.
    private static readonly Dictionary<string, string> OptionOf = new()
    {
        ["prompt"] = "--prompt", ["negativePrompt"] = "--negative-prompt", ["steps"] = "--steps", ["guidanceScale"] = "--guidance",
        ["seed"] = "--seed", ["scheduler"] = "--scheduler", ["decoder"] = "--decoder", ["size"] = "--width/--height",
        ["initialLatents"] = "--latents", ["karrasSigmas"] = "--karras", ["stepNoise"] = "--step-noise",
        ["tiledDecode"] = "--tiled-decode", ["tileSize"] = "--tile-size",
        ["cacheInterval"] = "--deep-cache-interval", ["cacheSchedule"] = "--deep-cache-schedule",
        ["image"] = "--init-image", ["strength"] = "--strength", ["encoderNoise"] = "--encoder-noise",
    };

    public static async Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr, CancellationToken cancellationToken = default)
    {
        var root = new RootCommand("SdFunctions: Stable Diffusion 1.x on ONNX Runtime, from the command line.");
        root.Subcommands.Add(GenerateCommand(stderr));
        root.Subcommands.Add(DecodeCommand(stderr));
        root.Subcommands.Add(TokenizeCommand(stdout));
        root.Subcommands.Add(OptimizeCommand(stderr));
        root.Subcommands.Add(EvaluateCommand(stdout, stderr));
        root.Subcommands.Add(BenchCommand(stderr));
        root.Subcommands.Add(BenchProbeCommand(stderr));

        var parsed = root.Parse(args);
        if (parsed.Errors.Count > 0)
        {
            stderr.WriteLine($"sdf: {ParseErrors(parsed)} (see sdf --help)");
            return BadInput;
        }
        try
        {
            return await parsed.InvokeAsync(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false },
                cancellationToken);
        }
        catch (InvalidGenerationRequestException e)
        {
            string option = e.ParamName is { } p && OptionOf.TryGetValue(p, out string? o) ? o : e.ParamName ?? "request";
            return Fail(stderr, $"{option}: {InOptionWords(WithoutParameter(e))}", BadInput);
        }
        catch (CliUsageException e) { return Fail(stderr, e.Message, BadInput); }
        catch (ArgumentException e) { return Fail(stderr, WithoutParameter(e), BadInput); }
        catch (ModelBundleException e) { return Fail(stderr, e.Message, Failed); }
        catch (OnnxRuntimeException e) when (!cancellationToken.IsCancellationRequested)
        {
            // ORT's text starts with its status code in brackets; the first line says what failed.
            return Fail(stderr, $"ONNX Runtime could not run the model: {e.Message.Split('\n')[0].Trim()}", Failed);
        }
        catch (OperationCanceledException) { return Fail(stderr, "canceled", Canceled); }
        catch (OutOfMemoryException) { return Fail(stderr, "out of memory: try a smaller --width/--height or fewer --threads", Failed); }
        catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or InvalidDataException)
        {
            return Fail(stderr, e.Message, Failed);
        }
    }

    private static int Fail(TextWriter stderr, string message, int code)
    {
        stderr.WriteLine($"sdf: {message.ReplaceLineEndings(" ").Replace('\t', ' ')}");
        return code;
    }

    // ArgumentException appends " (Parameter 'x')" to its text: a .NET detail, not the user's.
    private static string WithoutParameter(ArgumentException e) =>
        e.ParamName is { } p ? e.Message.Replace($" (Parameter '{p}')", "", StringComparison.Ordinal) : e.Message;

    /// <summary>
    /// The parser's errors for a person: an unknown option is named once with the nearest real one (its value, also unmatched,
    /// is not a second error); otherwise every error in user words.
    /// </summary>
    internal static string ParseErrors(ParseResult parsed)
    {
        if (parsed.UnmatchedTokens.FirstOrDefault(t => t.StartsWith('-')) is { } unknown)
        {
            var names = parsed.CommandResult.Command.Options.SelectMany(o => o.Aliases.Prepend(o.Name)).Where(n => n.StartsWith("--")).Distinct();
            string? nearest = names.MinBy(n => EditDistance(n, unknown));
            return nearest is not null && EditDistance(nearest, unknown) <= Math.Max(2, unknown.Length / 3)
                ? $"unknown option {unknown}; did you mean {nearest}?" : $"unknown option {unknown}";
        }
        return string.Join("; ", parsed.Errors.Select(e => InUserWords(e.Message)));
    }

    private static int EditDistance(string a, string b)
    {
        var row = Enumerable.Range(0, b.Length + 1).ToArray();
        for (int i = 1; i <= a.Length; i++)
        {
            int diagonal = row[0];
            row[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int above = row[j];
                row[j] = Math.Min(Math.Min(row[j] + 1, row[j - 1] + 1), diagonal + (a[i - 1] == b[j - 1] ? 0 : 1));
                diagonal = above;
            }
        }
        return row[b.Length];
    }

    /// <summary>A request rule's text names the API's fields (cacheInterval); on the command line the option is what the user typed.</summary>
    private static string InOptionWords(string reason) =>
        OptionOf.Where(kv => kv.Key.Any(char.IsUpper)) // camelCase names only: "steps" or "seed" are also plain words
            .Aggregate(reason, (text, kv) => System.Text.RegularExpressions.Regex.Replace(text, $@"\b{kv.Key}\b", kv.Value));

    /// <summary>System.CommandLine names .NET types in its parse errors ("System.Nullable`1[System.Int64]"); say what is expected instead.</summary>
    internal static string InUserWords(string message) =>
        System.Text.RegularExpressions.Regex.Replace(message.ReplaceLineEndings(" ").Replace('\t', ' '), @"as expected type '([^']+)'", m =>
            m.Groups[1].Value switch
            {
                var t when t.Contains("Int32") || t.Contains("Int64") => "as a whole number",
                var t when t.Contains("Double") || t.Contains("Single") => "as a number",
                var t when t.Contains("Boolean") => "as true or false",
                _ => "as a valid value",
            });

    /// <summary>The model folder, checked to exist, with a message that says which path was tried and how to choose another.</summary>
    private static string RequireModel(string path)
    {
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) return full;
        string which = path == DefaultModel ? " (the default: $SDF_MODEL, else the bundled tiny-shapes model)" : "";
        throw new CliUsageException($"--model: there is no model folder at {full}{which}. Pass --model DIR, a diffusers ONNX bundle (optimum-cli export onnx).");
    }

    private static Option<string> ModelOption() => new("--model", "-m")
    {
        Description = "Model bundle directory (diffusers ONNX layout). Default: $SDF_MODEL or the bundled tiny-shapes model.",
        DefaultValueFactory = _ => DefaultModel,
    };

    private static Command GenerateCommand(TextWriter stderr)
    {
        var model = ModelOption();
        var prompt = new Option<string>("--prompt", "-p") { Description = "What to draw.", Required = true };
        var negative = new Option<string>("--negative-prompt") { Description = "What to steer away from.", DefaultValueFactory = _ => "" };
        var steps = new Option<int?>("--steps") { Description = "Denoising steps (1–150; lcm: 1–8 recommended, at most 50). Default: 50, lcm 4." };
        var guidance = new Option<double?>("--guidance")
        {
            Description = "Guidance scale (0–30; ≤ 1 turns classifier-free guidance off). Default: 7.5; LCM-distilled models 8.5; lcm on other models 1.",
        };
        var seed = new Option<long?>("--seed") { Description = "Seed for the initial noise; random when absent (printed)." };
        var scheduler = new Option<string?>("--scheduler") { Description = $"One of {string.Join(", ", SchedulerCatalog.Names)}. Default: the bundle's." };
        var karras = new Option<bool>("--karras") { Description = "Karras sigmas (euler, lms, dpmpp-2m)." };
        var width = new Option<int?>("--width") { Description = "Image width (multiple of 64). Default: the model's native size." };
        var height = new Option<int?>("--height") { Description = "Image height (multiple of 64). Default: the model's native size." };
        var latents = new Option<string?>("--latents")
        {
            Description = "Initial latents: raw little-endian float32 [1,4,H/8,W/8], instead of the seed; with --init-image, the noise added to the encoded image.",
        };
        var initImage = new Option<string?>("--init-image") { Description = "Image-to-image: start from this PNG, JPEG or WebP (another size is scaled to cover and center-cropped)." };
        var strength = new Option<double?>("--strength") { Description = $"With --init-image: how far to depart from it, 0 < s ≤ 1 (int(steps·s) steps run). Default: {GenerationRequest.DefaultStrength}." };
        var encoderNoise = new Option<string?>("--encoder-noise")
        {
            Description = "With --init-image: the ε sampling the encoder's Gaussian, raw little-endian float32 [1,4,H/8,W/8], instead of the seed's stream.",
        };
        var stepNoise = new Option<string?>("--step-noise")
        {
            Description = "Noise added between steps (lcm, euler-a): raw little-endian float32 [steps−1, 1, 4, H/8, W/8] for lcm, instead of the seed's stream.",
        };
        var decoder = new Option<string?>("--decoder") { Description = "Image decoder: full (the VAE) or tiny (TAESD). Default: full when the model has it." };
        decoder.AcceptOnlyFromAmong([.. DecoderComponent.Names]);
        var tiledDecode = new Option<bool>("--tiled-decode") { Description = "Decode the full VAE tile by tile (diffusers' tiled_decode): less memory, slightly different seams." };
        var tileSize = new Option<int?>("--tile-size") { Description = "Tile side in pixels with --tiled-decode. Default: the VAE config's sample_size." };
        var cacheInterval = new Option<int?>("--deep-cache-interval")
        {
            Description = "DeepCache: run the whole UNet every N-th call, only its shallow branch between (a bundle from optimize --deep-cache). Default: 1 (off).",
        };
        var cacheSchedule = new Option<string?>("--deep-cache-schedule") { Description = "uniform (default) or nonuniform (DeepCache's quadratic schedule around 0.3 × steps)." };
        cacheSchedule.AcceptOnlyFromAmong([.. DeepCacheSchedule.Names]);
        var output = new Option<string>("--out", "-o") { Description = "Where to write the PNG.", Required = true };
        var cache = new Option<string?>("--cache") { Description = "Directory for optimized graphs, reused on the next load." };
        var threads = new Option<int?>("--threads") { Description = "Intra-op threads. Default: physical cores." };
        var memoryBudget = new Option<string?>("--memory-budget")
        {
            Description = "Stay under this much memory (e.g. 2.5GB, 1536MiB): the VAE decodes in tiles and the text encoder and decoder release their memory when needed.",
        };

        var command = new Command("generate", "Generate one image from a prompt and write it as PNG.")
        {
            model, prompt, negative, steps, guidance, seed, scheduler, karras, decoder, tiledDecode, tileSize, cacheInterval, cacheSchedule, width, height, latents, initImage, strength, encoderNoise, stepNoise, output, cache, threads, memoryBudget,
        };
        command.SetAction(async (parse, ct) =>
        {
            var request = new GenerationRequest
            {
                Prompt = parse.GetValue(prompt)!,
                NegativePrompt = parse.GetValue(negative) ?? "",
                Steps = parse.GetValue(steps),
                GuidanceScale = parse.GetValue(guidance),
                Seed = parse.GetValue(seed),
                Scheduler = parse.GetValue(scheduler),
                KarrasSigmas = parse.GetValue(karras) ? true : null,
                Decoder = parse.GetValue(decoder),
                TiledDecode = parse.GetValue(tiledDecode) ? true : null,
                TileSize = parse.GetValue(tileSize),
                CacheInterval = parse.GetValue(cacheInterval),
                CacheSchedule = parse.GetValue(cacheSchedule),
            };
            // Everything that can be checked without the model is checked before spending time on loading it.
            request.ValidateParameters();
            string? initImagePath = parse.GetValue(initImage);
            if (initImagePath is null && parse.GetValue(strength) is not null) throw new CliUsageException("--strength needs --init-image.");
            if (initImagePath is null && parse.GetValue(encoderNoise) is not null) throw new CliUsageException("--encoder-noise needs --init-image.");
            if (parse.GetValue(strength) is { } s && !(s > 0 && s <= 1)) throw new CliUsageException($"--strength must be greater than 0 and at most 1; got {s}.");
            if (initImagePath is not null && !File.Exists(initImagePath)) throw new CliUsageException($"--init-image: {initImagePath} does not exist.");
            if (parse.GetValue(threads) is < 1) throw new CliUsageException("--threads must be at least 1.");
            long? budget;
            try { budget = parse.GetValue(memoryBudget) is { } text ? MemoryPlan.ParseBytes(text) : null; }
            catch (FormatException e) { throw new CliUsageException($"--memory-budget: {e.Message}"); }
            string modelDir = RequireModel(parse.GetValue(model)!);
            if (PipelineOptions.MemoryNeededFor(parse.GetValue(width), parse.GetValue(height)) is { } tooBig) throw new CliUsageException($"--width/--height: {tooBig}");
            string outPath = RequireWritableFile("--out", parse.GetValue(output)!);

            using var loggerFactory = LoggerFactory.Create(b => b.AddSimpleConsole(o => { o.SingleLine = true; })
                .AddFilter((category, level) => level >= LogLevel.Warning).SetMinimumLevel(LogLevel.Warning));
            var options = new PipelineOptions
            {
                Width = parse.GetValue(width),
                Height = parse.GetValue(height),
                WarmUp = false, // one generation per process: warming up would only add a run
                MemoryBudget = budget,
                Session = new SessionSettings { IntraOpThreads = parse.GetValue(threads), OptimizedModelCacheDirectory = parse.GetValue(cache) },
            };
            float[]? initialLatents = parse.GetValue(latents) is { } latentsPath ? ReadFloats("--latents", latentsPath) : null;
            using var pipeline = await StableDiffusionPipeline.LoadAsync(modelDir, options, loggerFactory.CreateLogger("sdf"), ct);

            if (initialLatents is not null) request = request with { InitialLatents = initialLatents };
            if (initImagePath is not null)
                request = request with
                {
                    InitImage = InitImage.Decode(await File.ReadAllBytesAsync(initImagePath, ct), pipeline.Width, pipeline.Height),
                    Strength = parse.GetValue(strength),
                    EncoderNoise = parse.GetValue(encoderNoise) is { } epsPath ? ReadFloats("--encoder-noise", epsPath) : null,
                };
            if (parse.GetValue(stepNoise) is { } noisePath)
            {
                float[] values = ReadFloats("--step-noise", noisePath);
                int latentSize = pipeline.LatentChannels * pipeline.LatentHeight * pipeline.LatentWidth;
                if (values.Length == 0 || values.Length % latentSize != 0)
                    throw new CliUsageException($"--step-noise: {noisePath} holds {values.Length} floats, not a whole number of latents of {latentSize} (1×{pipeline.LatentChannels}×{pipeline.LatentHeight}×{pipeline.LatentWidth}).");
                request = request with { StepNoise = new RecordedGaussianNoise(values) };
            }
            var bar = ProgressBar.On(stderr);
            var result = await pipeline.GenerateAsync(request, bar, ct);
            bar.Finish();

            string parameters = GenerationParameters.Format(request.Prompt, request.NegativePrompt, result, pipeline.Bundle.Name);
            await File.WriteAllBytesAsync(outPath, await result.EncodeAsync(ImageFile.Png, parameters: parameters, cancellationToken: ct), ct);
            var t = result.Timings;
            var sorted = t.Steps.Order().ToArray();
            var median = sorted.Length == 0 ? TimeSpan.Zero : sorted[sorted.Length / 2];
            // PNDM runs one iteration more than the steps asked (its first PLMS step evaluates the UNet twice, as in diffusers).
            string iterations = result.Strength is not null ? $", the last {t.Steps.Count} run from the image"
                : t.Steps.Count == result.Steps ? "" : $", {t.Steps.Count} iterations: its first step evaluates the UNet twice";
            stderr.WriteLine(
                $"load {pipeline.LoadTime.TotalSeconds:F2} s | encode {t.Encode.TotalSeconds:F3} s | " +
                $"{result.Steps} steps ({result.Scheduler}{iterations}, {result.UNetCalls} UNet calls at batch {result.UNetBatch}{(result.CacheInterval > 1 ? $" ({result.ShallowUNetCalls} shallow: DeepCache every {result.CacheInterval}, {result.CacheSchedule})" : "")}, guidance {result.GuidanceScale:0.##} {result.Conditioning}) " +
                $"median {median.TotalSeconds:F3} s, total {t.Denoise.TotalSeconds:F2} s | decode ({result.Decoder}{(result.DecodeTileSize is { } tile ? $", tiles of {tile} px" : "")}) {t.Decode.TotalSeconds:F3} s | generation {t.Total.TotalSeconds:F2} s");
            string origin = initialLatents is null ? $"seed {result.Seed}" : $"latents from {parse.GetValue(latents)}";
            if (initImagePath is not null)
                origin += $", from {initImagePath}{(request.InitImage!.Resized ? $" ({request.InitImage.SourceWidth}×{request.InitImage.SourceHeight} fitted)" : "")} at strength {result.Strength:0.###}" +
                    (result.Reproducible ? "" : "; not reproducible: the model's vae_encoder samples with an unseeded generator");
            string peak = result.PeakMemoryBytes is { } bytes ? $", peak memory {bytes / 1e9:F2} GB{(budget is { } b ? $" (budget {b / 1e9:F2} GB)" : "")}" : "";
            stderr.WriteLine($"wrote {outPath} ({result.Width}×{result.Height}, {origin}{(result.PromptTruncated ? ", prompt truncated to 77 tokens" : "")}{peak})");
            return Ok;
        });
        return command;
    }

    private static Command DecodeCommand(TextWriter stderr)
    {
        var model = ModelOption();
        var latents = new Option<string>("--latents")
        {
            Description = "The latents to decode: raw little-endian float32 [1,4,H/8,W/8] as the pipeline produces them (before the scaling factor is divided out).",
            Required = true,
        };
        var width = new Option<int>("--width") { Description = "Image width (8 × the latents' width).", Required = true };
        var height = new Option<int>("--height") { Description = "Image height (8 × the latents' height).", Required = true };
        var tiled = new Option<bool>("--tiled") { Description = "Decode tile by tile as diffusers' tiled_decode: the memory of one tile, slightly different pixels at the seams." };
        var tileSize = new Option<int?>("--tile-size") { Description = "Tile side in pixels (with --tiled). Default: the VAE config's sample_size, as diffusers." };
        var output = new Option<string>("--out", "-o") { Description = "Where to write the PNG.", Required = true };
        var threads = new Option<int?>("--threads") { Description = "Intra-op threads. Default: physical cores." };
        var command = new Command("decode", "Decode saved latents with the model's VAE into a PNG, whole or tiled.")
        {
            model, latents, width, height, tiled, tileSize, output, threads,
        };
        command.SetAction(async (parse, ct) =>
        {
            int w = parse.GetValue(width), h = parse.GetValue(height);
            if (w <= 0 || h <= 0 || w % 8 != 0 || h % 8 != 0) throw new CliUsageException($"--width/--height: {w}×{h} is not a positive multiple of 8.");
            if (parse.GetValue(tileSize) is { } t && !parse.GetValue(tiled)) throw new CliUsageException($"--tile-size {t} needs --tiled.");
            if (parse.GetValue(threads) is < 1) throw new CliUsageException("--threads must be at least 1.");
            string modelDir = RequireModel(parse.GetValue(model)!);
            string outPath = RequireWritableFile("--out", parse.GetValue(output)!);
            float[] values = ReadFloats("--latents", parse.GetValue(latents)!);
            var bundle = ModelBundle.Open(modelDir);
            var vae = bundle.Decoders[0];
            if (vae.Name != DecoderComponent.Full) throw new CliUsageException($"--model: {modelDir} has no full VAE decoder (its vae_decoder is {vae.Name}); decode needs AutoencoderKL.");
            int latentHeight = h / bundle.VaeScaleFactor, latentWidth = w / bundle.VaeScaleFactor;
            int expected = 4 * latentHeight * latentWidth;
            if (values.Length != expected)
                throw new CliUsageException($"--latents: {parse.GetValue(latents)} holds {values.Length} floats; {w}×{h} needs 1×4×{latentHeight}×{latentWidth} = {expected}.");

            var factory = new OnnxSessionFactory(new SessionSettings { IntraOpThreads = parse.GetValue(threads) }, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
            using var run = new RunOptions();
            using var abort = ct.Register(() => run.Terminate = true);
            var load = System.Diagnostics.Stopwatch.StartNew();
            using var decoders = new DecoderCatalog(factory, bundle, latentHeight, latentWidth);
            var decoder = decoders.Get(new DecodePlan(DecoderComponent.Full, parse.GetValue(tiled), parse.GetValue(tileSize)));
            var loaded = load.Elapsed;
            var watch = System.Diagnostics.Stopwatch.StartNew();
            byte[] rgb = await Task.Run(() => decoder.DecodeToRgb(values, latentHeight, latentWidth, run), ct);
            var took = watch.Elapsed;
            string how = decoder.Describe(latentHeight, latentWidth);
            await File.WriteAllBytesAsync(outPath, await ImageFile.EncodeAsync(rgb, w, h, ImageFile.Png, cancellationToken: ct), ct);
            stderr.WriteLine($"wrote {outPath} ({w}×{h}, decoded {how} in {took.TotalSeconds:F2} s; session load {loaded.TotalSeconds:F2} s)");
            return Ok;
        });
        return command;
    }

    private static Command TokenizeCommand(TextWriter stdout)
    {
        var model = ModelOption();
        var text = new Argument<string>("text") { Description = "The prompt to tokenize." };
        var command = new Command("tokenize", "Print the 77 CLIP token ids of a prompt as a JSON array.") { model, text };
        command.SetAction(parse =>
        {
            var tokenizer = ModelBundle.OpenTokenizer(RequireModel(parse.GetValue(model)!));
            stdout.WriteLine(JsonSerializer.Serialize(tokenizer.Encode(parse.GetValue(text)!).Ids));
            return Ok;
        });
        return command;
    }

    private static Command OptimizeCommand(TextWriter stderr)
    {
        var model = ModelOption();
        var output = new Option<string>("--out", "-o") { Description = "New folder for the optimized bundle.", Required = true };
        var tome = new Option<double>("--tome-ratio") { Description = "Token Merging ratio in [0, 1) (0.4–0.5 in practice; 0 = off).", DefaultValueFactory = _ => 0 };
        var sx = new Option<int>("--tome-sx") { Description = "ToMe dst grid width (tomesd sx).", DefaultValueFactory = _ => 2 };
        var sy = new Option<int>("--tome-sy") { Description = "ToMe dst grid height (tomesd sy).", DefaultValueFactory = _ => 2 };
        var maxDownsample = new Option<int>("--tome-max-downsample") { Description = "Merge in blocks at most this much smaller than the latents (1, 2, 4, 8).", DefaultValueFactory = _ => 1 };
        var merge = new Option<string[]>("--tome-merge")
        {
            Description = "Sub-layers that run on merged tokens: attn, crossattn, mlp (comma-separated).", DefaultValueFactory = _ => ["attn"],
            CustomParser = r => r.Tokens.SelectMany(t => t.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray(),
        };
        var tomeSeed = new Option<int?>("--tome-seed") { Description = "Random dst token per cell from this seed (tomesd use_rand). Default: top-left." };
        var width = new Option<int?>("--width") { Description = "Image width the UNet is fixed to. Default: the model's native size." };
        var height = new Option<int?>("--height") { Description = "Image height the UNet is fixed to. Default: the model's native size." };
        var batch = new Option<int?>("--batch")
        {
            Description = "UNet batch: 2 runs a guided step in one call; 1 suits LCM and guidance-free requests (a guided step then takes two calls). Default: 1 for LCM-distilled UNets, else 2.",
        };
        var quantize = new Option<string?>("--quantize") { Description = "int8: static INT8 QDQ UNet calibrated on prompts. Default: float." };
        quantize.AcceptOnlyFromAmong("int8");
        var preset = new Option<QuantizationPreset>("--quantize-preset")
        {
            Description = "mixed: convolutions and linear layers; aggressive: also attention matmuls and residual adds.",
            DefaultValueFactory = _ => QuantizationPreset.Mixed,
        };
        var ranges = new Option<RangeMethod>("--quantize-ranges")
        {
            Description = "How activation ranges come from calibration: percentile (default: each run's --quantize-percentile at both ends, rare spikes clipped) or minmax (every value seen).",
            DefaultValueFactory = _ => new QuantizationOptions().Ranges,
        };
        var percentile = new Option<double>("--quantize-percentile") { Description = "With --quantize-ranges percentile: the share of a run's values kept inside the range, in percent.", DefaultValueFactory = _ => new QuantizationOptions().Percentile };
        var errorBudget = new Option<double?>("--quantize-error-budget")
        {
            Description = "Sensitivity-guided mixed precision: keep the most harmful layer groups float until the UNet's output error (relative L2 vs float) is at most this, e.g. 0.05.",
        };
        var keepFloat = new Option<string[]>("--keep-float")
        {
            Description = "Node-name parts whose nodes stay float, beside the defaults (comma-separated), e.g. /up_blocks.3/attentions.2/.",
            CustomParser = r => r.Tokens.SelectMany(t => t.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray(),
        };
        var fullRange = new Option<bool>("--quantize-full-range")
        {
            Description = "8-bit weights instead of 7-bit: a bit more precise, but only correct on CPUs with VNNI (AVX2-only CPUs saturate).",
        };
        var quantizeTextEncoder = new Option<bool>("--quantize-text-encoder")
        {
            Description = "Store the text encoder's weights as int8 (weight-only: ~4x smaller, activations stay float, no calibration).",
        };
        var quantizeVae = new Option<bool>("--quantize-vae") { Description = "Experimental: also quantize the VAE decoder to INT8 (with --quantize int8): ~2.8x faster decode, visibly lower fidelity; check it on your model." };
        var calibration = new Option<string?>("--calibration") { Description = "Prompt file for calibration and the fidelity check, one per line. Default: the model card's example prompts, else four built-in ones." };
        var noFidelity = new Option<bool>("--no-fidelity") { Description = "Skip measuring the bundle against its source on the calibration prompts (UNet error per timestep range, PSNR/SSIM)." };
        var minPsnr = new Option<double?>("--min-psnr") { Description = "Fail, writing nothing, when the bundle's median PSNR against its source on the calibration prompts is below this many dB." };
        var calibrationSteps = new Option<int?>("--calibration-steps") { Description = "Denoising steps per calibration prompt and fidelity image. Default: the model card's steps, else 10." };
        var fuseAttention = new Option<bool>("--fuse-attention") { Description = "Replace the exported attention subgraphs with ONNX Runtime's fused MultiHeadAttention." };
        var compile = new Option<bool>("--compile") { Description = "Also store graphs optimized for this machine in the bundle (compiled/): faster first load where they match." };
        var deepCache = new Option<bool>("--deep-cache") { Description = "Also write DeepCache's full and shallow UNet graphs (same weights file), for generate --deep-cache-interval." };
        var deepCacheBranch = new Option<int>("--deep-cache-branch") { Description = "DeepCache's cache_branch_id: 0 = only the outermost resnet and attention run on a cached step.", DefaultValueFactory = _ => 0 };
        var command = new Command("optimize",
            "Write an optimized copy of a bundle: static-shape UNet with Token Merging and INT8 quantization, and a manifest.")
        {
            model, output, tome, sx, sy, maxDownsample, merge, tomeSeed, width, height, batch, quantize, preset, ranges, percentile, errorBudget, keepFloat, fullRange, quantizeTextEncoder, quantizeVae, calibration, calibrationSteps, noFidelity, minPsnr, fuseAttention, compile, deepCache, deepCacheBranch,
        };
        command.SetAction(async (parse, ct) =>
        {
            var progress = new SynchronousProgress(message => stderr.WriteLine($"optimize: {message}"));
            var manifest = await BundleOptimizer.OptimizeAsync(new OptimizeOptions
            {
                ModelDirectory = RequireModel(parse.GetValue(model)!), OutputDirectory = parse.GetValue(output)!, TomeRatio = parse.GetValue(tome),
                TomeSx = parse.GetValue(sx), TomeSy = parse.GetValue(sy), TomeMaxDownsample = parse.GetValue(maxDownsample),
                TomeMerge = parse.GetValue(merge)!, TomeSeed = parse.GetValue(tomeSeed),
                Width = parse.GetValue(width), Height = parse.GetValue(height), Batch = parse.GetValue(batch),
                Quantization = parse.GetValue(quantize) is null ? null : new QuantizationOptions
                {
                    Preset = parse.GetValue(preset), ReduceRange = !parse.GetValue(fullRange), Ranges = parse.GetValue(ranges), Percentile = parse.GetValue(percentile),
                    ErrorBudget = parse.GetValue(errorBudget), KeepFloat = [.. new QuantizationOptions().KeepFloat, .. parse.GetValue(keepFloat) ?? []],
                },
                QuantizeVaeDecoder = parse.GetValue(quantizeVae), QuantizeTextEncoder = parse.GetValue(quantizeTextEncoder), CalibrationFile = parse.GetValue(calibration), CalibrationSteps = parse.GetValue(calibrationSteps), Compile = parse.GetValue(compile),
                FuseAttention = parse.GetValue(fuseAttention), DeepCache = parse.GetValue(deepCache), DeepCacheBranch = parse.GetValue(deepCacheBranch),
                Fidelity = !parse.GetValue(noFidelity), MinPsnr = parse.GetValue(minPsnr),
            }, progress, ct);
            stderr.WriteLine($"optimize: UNet {manifest.UnetBytesBefore / 1e6:F1} MB → {manifest.UnetBytesAfter / 1e6:F1} MB; " +
                $"{manifest.TokenMerging.Count} blocks merge tokens; {(manifest.Quantization is null ? "float" : "int8 " + manifest.Quantization.Preset)}; shape {string.Join(", ", manifest.StaticDims.Select(d => $"{d.Key}={d.Value}"))}");
            return Ok;
        });
        return command;
    }

    private static Command BenchCommand(TextWriter stderr)
    {
        var work = new Option<string>("--work")
        {
            Description = "Folder for the random-weight bundles, optimized variants and caches (reused across runs; ~15 GB).",
            DefaultValueFactory = _ => Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "sdfunctions", "bench"),
        };
        var graphs = new Option<string>("--graphs") { Description = "The weightless SD 1.5 graphs.", DefaultValueFactory = _ => BenchOptions.DefaultGraphsDirectory };
        var fp32 = new Option<string?>("--fp32-bundle") { Description = "Benchmark this bundle as the FP32 variant instead of the SD 1.5 graphs (e.g. the tiny bundle)." };
        var variants = new Option<string[]>("--variants")
        {
            Description = $"Variants to measure (comma-separated): {string.Join(", ", BenchVariant.All.Select(v => v.Name))}.",
            DefaultValueFactory = _ => [.. BenchVariant.All.Select(v => v.Name)],
            CustomParser = r => r.Tokens.SelectMany(t => t.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray(),
        };
        var repeats = new Option<int>("--repeats") { Description = "Timed runs per figure after warm-up.", DefaultValueFactory = _ => 3 };
        var noFindings = new Option<bool>("--no-findings") { Description = "Skip the settings and VAE findings." };
        var e2e50 = new Option<string>("--e2e50") { Description = "50-step PNDM generation for: fastest, all, none.", DefaultValueFactory = _ => "fastest" };
        e2e50.AcceptOnlyFromAmong("fastest", "all", "none");
        var noImages = new Option<bool>("--no-time-to-image") { Description = "Skip the time-to-image table (50 PNDM, 20 DPM++, LCM 4 steps with the VAE and with TAESD)." };
        var recipes = new Option<string[]>("--recipes")
        {
            Description = $"Time-to-image recipes to run (comma-separated): {string.Join(", ", ImageRecipe.All.Select(r => r.Label))}.",
            DefaultValueFactory = _ => [.. ImageRecipe.All.Select(r => r.Key)],
            CustomParser = r => r.Tokens.SelectMany(t => t.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray(),
        };
        var deepCacheIntervals = new Option<int[]>("--deep-cache-intervals")
        {
            Description = "DeepCache intervals to time the multi-step recipes at, beside interval 1 (comma-separated, or none).",
            DefaultValueFactory = _ => [2, 3, 5],
            CustomParser = r =>
            {
                var values = r.Tokens.SelectMany(t => t.Value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)).ToArray();
                if (values is ["none"]) return [];
                var parsed = values.Select(v => int.TryParse(v, out int i) ? i : (int?)null).ToArray();
                if (parsed.Any(p => p is null)) { r.AddError($"--deep-cache-intervals takes whole numbers or none; got {string.Join(",", values)}."); return []; }
                return [.. parsed.Select(p => p!.Value)];
            },
        };
        var markdown = new Option<string>("--out") { Description = "The report.", DefaultValueFactory = _ => "BENCHMARKS.md" };
        var json = new Option<string>("--json") { Description = "The figures as JSON.", DefaultValueFactory = _ => "BENCHMARKS.json" };
        var fromJson = new Option<string?>("--from-json")
        {
            Description = "Measure nothing: write the report and its chart (--out, and the .svg beside it) from the figures an earlier run saved.",
        };
        var qualityPairs = new Option<int>("--quality-pairs")
        {
            Description = "Caption × seed pairs per quality figure, measured on the bundled trained tiny-shapes model with each row's recipe (0 = none).",
            DefaultValueFactory = _ => 100,
        };
        var qualityLcm = new Option<string>("--quality-lcm-bundle")
        {
            Description = "The trained LCM model the few-step rows' quality is measured on.", DefaultValueFactory = _ => new BenchOptions { WorkDirectory = "" }.QualityFewStepBundle,
        };
        var measureQuality = new Option<bool>("--measure-quality") { Description = "With --from-json: measure the saved rows' quality columns (the speed figures stay those of their run)." };
        var command = new Command("bench",
            "Real-size benchmark: FP32 vs INT8 vs INT8+ToMe on the SD 1.5 graphs with random weights; writes BENCHMARKS.md, its chart BENCHMARKS.svg and BENCHMARKS.json.")
        {
            work, graphs, fp32, variants, repeats, noFindings, e2e50, noImages, recipes, deepCacheIntervals, markdown, json, fromJson, qualityPairs, qualityLcm, measureQuality,
        };
        command.SetAction(async (parse, ct) =>
        {
            if (parse.GetValue(qualityPairs) is < 0 or > 10_000) throw new CliUsageException($"--quality-pairs must be in 0–10000; got {parse.GetValue(qualityPairs)}.");
            if (parse.GetValue(measureQuality) && parse.GetValue(fromJson) is null) throw new CliUsageException("--measure-quality adds quality to a saved report: give --from-json.");
            var progress = new SynchronousProgress(message => stderr.WriteLine($"[{DateTime.Now:HH:mm:ss}] bench: {message}"));
            if (parse.GetValue(fromJson) is { } saved)
            {
                if (!File.Exists(saved)) throw new CliUsageException($"--from-json {saved}: no such file.");
                string report = parse.GetValue(markdown)!;
                var read = await BenchReport.ReadAsync(saved, ct);
                if (parse.GetValue(measureQuality))
                {
                    read = await BenchRunner.WithQualityAsync(read, new BenchOptions
                    {
                        WorkDirectory = parse.GetValue(work)!, QualityPairs = Math.Max(1, parse.GetValue(qualityPairs)), QualityFewStepBundle = parse.GetValue(qualityLcm)!,
                    }, progress, ct);
                    await read.WriteAsync(report, saved, ct);
                    stderr.WriteLine($"bench: measured the quality columns; wrote {report}, {BenchReport.ChartPath(report)} and {saved}");
                    return Ok;
                }
                await read.WriteAsync(report, jsonPath: null, ct);
                stderr.WriteLine($"bench: wrote {report} and {BenchReport.ChartPath(report)} from {saved}");
                return Ok;
            }
            await BenchRunner.RunAsync(new BenchOptions
            {
                WorkDirectory = parse.GetValue(work)!, GraphsDirectory = parse.GetValue(graphs)!, Fp32Bundle = parse.GetValue(fp32),
                Variants = parse.GetValue(variants)!, Repeats = parse.GetValue(repeats), Findings = !parse.GetValue(noFindings),
                E2e50 = parse.GetValue(e2e50)!, TimeToImage = !parse.GetValue(noImages),
                Recipes = parse.GetValue(recipes)!, DeepCacheIntervals = parse.GetValue(deepCacheIntervals)!, MarkdownPath = parse.GetValue(markdown)!, JsonPath = parse.GetValue(json)!,
                QualityPairs = parse.GetValue(qualityPairs), QualityFewStepBundle = parse.GetValue(qualityLcm)!,
                Command = "sdf " + string.Join(' ', parse.Tokens.Select(t => t.Value)),
            }, progress, ct);
            return Ok;
        });
        return command;
    }

    /// <summary>One measurement in a process of its own, started by <c>bench</c> (not for people).</summary>
    private static Command BenchProbeCommand(TextWriter stderr)
    {
        var request = new Argument<string>("request") { Description = "The probe request (JSON)." };
        var result = new Argument<string>("result") { Description = "Where to write the result (JSON)." };
        var command = new Command("bench-probe", "Runs one benchmark probe (used by bench).") { request, result };
        command.Hidden = true;
        command.SetAction(async (parse, ct) =>
        {
            var probe = JsonSerializer.Deserialize<ProbeRequest>(await File.ReadAllTextAsync(parse.GetValue(request)!, ct), BenchProbe.Json)!;
            var measured = await BenchProbe.RunAsync(probe, new SynchronousProgress(stderr.WriteLine), ct);
            await File.WriteAllTextAsync(parse.GetValue(result)!, JsonSerializer.Serialize(measured, BenchProbe.Json), ct);
            return Ok;
        });
        return command;
    }

    private static float[] ReadFloats(string option, string path)
    {
        if (!File.Exists(path)) throw new CliUsageException($"{option}: {path} does not exist.");
        byte[] bytes = File.ReadAllBytes(path);
        if (bytes.Length % 4 != 0) throw new CliUsageException($"{option}: {path} is {bytes.Length} bytes, not a whole number of float32 values.");
        float[] values = MemoryMarshal.Cast<byte, float>(bytes).ToArray();
        int bad = Array.FindIndex(values, v => !float.IsFinite(v));
        if (bad >= 0) throw new CliUsageException($"{option}: {path} holds a non-finite value ({values[bad]}) at float {bad}; the image would be black.");
        return values;
    }

    /// <summary>A file path that can be written, checked now rather than after a whole generation.</summary>
    private static string RequireWritableFile(string option, string path)
    {
        string full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new CliUsageException($"{option}: {full} is a folder; name the file to write, e.g. {Path.Combine(full, "image.png")}.");
        if (Path.GetDirectoryName(full) is { } dir && !Directory.Exists(dir)) throw new CliUsageException($"{option}: the folder {dir} does not exist.");
        bool existed = File.Exists(full);
        try
        {
            using (File.Open(full, FileMode.OpenOrCreate, FileAccess.Write)) { }
            if (!existed) File.Delete(full);
        }
        catch (Exception e) when (e is UnauthorizedAccessException or IOException)
        {
            throw new CliUsageException($"{option}: {full} cannot be written ({e.Message.TrimEnd('.')}).");
        }
        return full;
    }
}

/// <summary>A command-line mistake found after parsing (a missing file, a value out of range).</summary>
public sealed class CliUsageException(string message) : Exception(message);

/// <summary>
/// Progress on stderr: a bar redrawn in place on a terminal; when stderr is a file or a pipe, a plain line every tenth of
/// the run (a log gets lines, not one line of carriage returns).
/// </summary>
internal sealed class ProgressBar(TextWriter writer, bool interactive) : IProgress<GenerationProgress>, IProgress<EvaluationProgress>
{
    private const int Width = 30;
    private bool _drawn;

    /// <summary>A bar on stderr when it is the console and a terminal, else plain lines.</summary>
    public static ProgressBar On(TextWriter stderr) => new(stderr, interactive: ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected);

    // Iterations, with the steps asked for when they differ (PNDM's extra one).
    public void Report(GenerationProgress p) =>
        Draw(p.Step, p.Total, p.Steps is > 0 && p.Steps != p.Total ? $"iteration {p.Step}/{p.Total} ({p.Steps} steps)" : $"step {p.Step}/{p.Total}", p.Elapsed);

    public void Report(EvaluationProgress p) => Draw(p.Done, p.Total, $"image {p.Done}/{p.Total}", p.Elapsed);

    private void Draw(int done, int total, string count, TimeSpan elapsed)
    {
        if (interactive)
        {
            int filled = total == 0 ? Width : done * Width / total;
            writer.Write($"\r[{new string('#', filled)}{new string('.', Width - filled)}] {count} {elapsed.TotalSeconds:F1} s");
            _drawn = true;
        }
        else if (done == total || done * 10 / Math.Max(1, total) != (done - 1) * 10 / Math.Max(1, total))
            writer.WriteLine($"{count} {elapsed.TotalSeconds:F1} s");
        writer.Flush();
    }

    public void Finish()
    {
        if (_drawn) writer.WriteLine();
    }
}
